"""The Q or K descriptor model of QK Iteration: a CNN feature plus gist256, mapped to a descriptor near gist256.

Letters: B batch, D backbone feature dim, G = 256 gist256 dim, E = 256 descriptor dim (E == G: the descriptor
is a small residual on gist256), H hidden FFN width.

    desc = g + s · ffn(concat(feat, g))                     (paper Fig. 5, s = head_scale = 0.01)
    ffn  = Linear(D + G → H) → ReLU → Linear(H → E)
    competition variant, applied after: desc ← desc + s · Linear(H → E)(ReLU(Linear(E → H)(desc)))

With `feature_norm` the head sees feat / ‖feat‖ instead of feat (bank rows stay raw features; the head
normalises them every time it reads them). Two starting points for the FFN:
- "random" (the paper): PyTorch's default init; with s = 0.01 the initial descriptor is gist256 plus a
  perturbation about 1% of the FFN's output scale, i.e. a freshly built model sits at the GIST baseline and
  only ~10^5 steps move the descriptor onto the backbone's features.
- "pca" (`init_heads_from_pca`): the FFN starts as an exact linear map, desc = g + λ · P(f̂ − μ), with P the top
  E principal directions of the frozen backbone's features on the training images (fitted by the trainer from
  the first bank, no whitening) and λ setting the backbone part's RMS norm to `head_init_weight` × gist256's.
  Short (CPU) schedules then start from GIST and the off-the-shelf backbone combined and train from there.
H = 1024 by default:
a bottleneck below D + G = 1536 for efficientnet_lite0, about 1.8 M head parameters against 3.4 M in the
backbone. BatchNorm is frozen everywhere (eval mode, no gradient) because training batches are small and
mostly augmented copies of few images.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from qkcopy.config import VARIANTS, ModelConfig
from qkcopy.model.backbone import create_backbone, feature_dim, input_normalization
from qkcopy.model.pca import PCA
from qkcopy.seeds import part_seed

log = logging.getLogger(__name__)



def _ffn(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out))


class Head(nn.Module):
    """(feat (B, D), g256 (B, E)) → descriptor (B, E); both inputs in the head's dtype (float32 by default)."""

    def __init__(self, feature_dim: int, descriptor_dim: int = 256, hidden: int = 1024,
                 scale: float = 0.01, variant: str = "paper", feature_norm: bool = False) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"head variant {variant!r} is not one of {VARIANTS}")
        self.feature_dim, self.descriptor_dim, self.scale = feature_dim, descriptor_dim, scale
        self.feature_norm = feature_norm
        self.ffn = _ffn(feature_dim + descriptor_dim, hidden, descriptor_dim)
        self.refine = _ffn(descriptor_dim, hidden, descriptor_dim) if variant == "competition" else None

    def forward(self, feat: torch.Tensor, g256: torch.Tensor) -> torch.Tensor:
        dtype = self.ffn[0].weight.dtype
        if feat.ndim != 2 or feat.shape[1] != self.feature_dim or feat.dtype != dtype:
            raise ValueError(f"head features must be (B, {self.feature_dim}) {dtype}, "
                             f"got {tuple(feat.shape)} {feat.dtype}; cast fp16 bank rows with .float()")
        if g256.shape != (feat.shape[0], self.descriptor_dim) or g256.dtype != dtype:
            raise ValueError(f"head gist256 must be ({feat.shape[0]}, {self.descriptor_dim}) {dtype}, "
                             f"got {tuple(g256.shape)} {g256.dtype}")
        if self.feature_norm:
            feat = nn.functional.normalize(feat, dim=1)  # (B, D)
        desc = g256 + self.scale * self.ffn(torch.cat([feat, g256], dim=1))  # (B, E)
        if self.refine is not None:
            desc = desc + self.scale * self.refine(desc)  # (B, E)
        return desc


@torch.no_grad()
def init_heads_from_pca(heads: Sequence[Head], features: torch.Tensor, g256: torch.Tensor, weight: float) -> float:
    """Make every head in `heads` compute g + λ · P(f̂ − μ) exactly, from one PCA fit; returns λ. P, μ: PCA of
    `features` (N, D) (normalised first when the heads normalise), λ: RMS‖λ · P(f̂ − μ)‖ = weight · RMS‖g256‖
    over these rows. The heads must agree in dims, scale and feature_norm (Q's and K's of one config do).

    Layer 1 holds ±a·P in its first 2E units (ReLU(x) − ReLU(−x) = x), a = 1 / RMS of a projected coordinate so
    those units run at unit scale; layer 2 holds ±(λ / (s·a))·I on them and zeros on the other H − 2E units,
    which keep their random input weights and start contributing as training moves their zero outputs.
    """
    head = heads[0]
    e, d = head.descriptor_dim, head.feature_dim
    layouts = {(h.feature_dim, h.descriptor_dim, h.scale, h.feature_norm) for h in heads}
    if len(layouts) != 1:
        raise ValueError(f"heads initialised together must share (feature_dim, descriptor_dim, scale, "
                         f"feature_norm), got {sorted(layouts)}")
    if features.ndim != 2 or features.shape[1] != d or g256.shape != (features.shape[0], e):
        raise ValueError(f"head init needs features (N, {d}) and gist256 (N, {e}), "
                         f"got {tuple(features.shape)} and {tuple(g256.shape)}")
    if features.shape[0] < e:
        raise ValueError(f"head init: a PCA to {e} dims needs at least {e} training images, got {features.shape[0]}")
    feat = features.detach().double().cpu()  # the PCA is fitted in float64 with numpy
    if head.feature_norm:
        feat = nn.functional.normalize(feat, dim=1)  # (N, D)
    pca = PCA.fit(feat.numpy(), dim=e)
    proj = torch.from_numpy(pca.components).double()  # (E, D)
    mean = torch.from_numpy(pca.mean).double()  # (D,)
    z = (feat - mean) @ proj.T  # (N, E)
    rms_z = z.pow(2).sum(1).mean().sqrt()
    lam = weight * g256.detach().double().cpu().pow(2).sum(1).mean().sqrt() / rms_z
    a = (e / rms_z.pow(2)).sqrt()  # 1 / RMS of one coordinate
    c = (lam / (head.scale * a)).item()
    for h in heads:
        first, second = h.ffn[0], h.ffn[2]
        first.weight[:2 * e].zero_()
        first.weight[:e, :d] = (a * proj).to(first.weight)
        first.weight[e:2 * e, :d] = (-a * proj).to(first.weight)
        first.bias[:e] = (-a * proj @ mean).to(first.weight)
        first.bias[e:2 * e] = (a * proj @ mean).to(first.weight)
        second.weight.zero_()
        second.bias.zero_()
        eye = torch.eye(e, dtype=second.weight.dtype, device=second.weight.device)
        second.weight[:, :e] = c * eye
        second.weight[:, e:2 * e] = -c * eye
    return lam.item()


def freeze_batchnorm(module: nn.Module) -> None:
    """Every BatchNorm layer in eval mode (running stats fixed) with its affine parameters out of training."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)


class DescriptorModel(nn.Module):
    """Backbone + head. Pixels are (B, 3, H, W) float in [0, 1]; normalisation happens inside."""

    def __init__(self, backbone: nn.Module, head: Head,
                 mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        freeze_batchnorm(self)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim != 4 or pixels.shape[1] != 3 or not pixels.is_floating_point():
            raise ValueError(f"pixels must be (B, 3, H, W) float in [0, 1], got {tuple(pixels.shape)} {pixels.dtype}")
        return self.backbone((pixels - self.mean) / self.std)  # (B, D)

    def forward(self, pixels: torch.Tensor, g256: torch.Tensor) -> torch.Tensor:
        feat = self.features(pixels)  # (B, D), may be half under autocast
        dtype = self.head.ffn[0].weight.dtype
        return self.head(feat.to(dtype), g256.to(dtype))  # (B, E)

    def train(self, mode: bool = True) -> DescriptorModel:
        super().train(mode)
        freeze_batchnorm(self)
        return self

    def freeze_backbone(self) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def unfreeze_backbone(self) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        freeze_batchnorm(self.backbone)



def build_model(cfg: ModelConfig, backbone: nn.Module, head_seed: int) -> DescriptorModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(head_seed)
        head = Head(feature_dim(backbone), cfg.descriptor_dim, cfg.hidden, cfg.head_scale, cfg.variant,
                    cfg.feature_norm)
    mean, std = input_normalization(cfg.backbone)
    return DescriptorModel(backbone, head, mean, std)


def build_qk_models(cfg: ModelConfig, seed: int) -> tuple[DescriptorModel, DescriptorModel]:
    """Separate Q and K models: one backbone (pretrained, or random from `seed`) copied, heads seeded apart."""
    weights = None if cfg.weights is None else cfg.weights if cfg.weights == "imagenet" else Path(cfg.weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(part_seed(seed, "backbone"))
        backbone = create_backbone(cfg.backbone, weights)
    q = build_model(cfg, backbone, part_seed(seed, "q_head"))
    k = build_model(cfg, copy.deepcopy(backbone), part_seed(seed, "k_head"))
    return q, k


def param_fingerprint(module: nn.Module) -> str:
    """16 hex digits of sha256 over the state dict (names, dtypes, shapes, bytes) for provenance records."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
