import dataclasses

import pytest
import torch
from torch import nn

from qkcopy.model.backbone import create_backbone
from qkcopy.model.descriptor import (
    DescriptorModel,
    Head,
    ModelConfig,
    build_qk_models,
    freeze_batchnorm,
    init_heads_from_pca,
    param_fingerprint,
)
from qkcopy.seeds import part_seed


def _ffn_by_hand(seq, x):
    w1, b1, w2, b2 = seq[0].weight, seq[0].bias, seq[2].weight, seq[2].bias
    return torch.clamp(x @ w1.T + b1, min=0) @ w2.T + b2


def test_head_paper_formula_and_near_gist():
    torch.manual_seed(0)
    head = Head(feature_dim=40, descriptor_dim=16, hidden=32, scale=0.01)
    feat, g = torch.rand(5, 40), torch.randn(5, 16)
    with torch.no_grad():
        desc = head(feat, g)
        expected = g + 0.01 * _ffn_by_hand(head.ffn, torch.cat([feat, g], dim=1))
    assert desc.shape == (5, 16) and desc.dtype == torch.float32
    assert torch.allclose(desc, expected, atol=1e-6)
    assert ((desc - g).norm(dim=1) / g.norm(dim=1)).max() < 0.02  # initial descriptor ≈ gist256


def test_head_competition_formula():
    torch.manual_seed(1)
    head = Head(feature_dim=40, descriptor_dim=16, hidden=32, scale=0.01, variant="competition")
    feat, g = torch.rand(3, 40), torch.randn(3, 16)
    with torch.no_grad():
        e = g + 0.01 * _ffn_by_hand(head.ffn, torch.cat([feat, g], dim=1))
        expected = e + 0.01 * _ffn_by_hand(head.refine, e)
        assert torch.allclose(head(feat, g), expected, atol=1e-6)
    assert Head(40, 16, 32).refine is None


def test_head_rejects_bad_inputs():
    head = Head(feature_dim=40, descriptor_dim=16, hidden=32)
    with pytest.raises(ValueError, match=r"\(B, 40\) torch.float32.*\.float\(\)"):
        head(torch.rand(3, 40).half(), torch.randn(3, 16))
    with pytest.raises(ValueError, match=r"\(B, 40\)"):
        head(torch.rand(3, 41), torch.randn(3, 16))
    with pytest.raises(ValueError, match=r"\(3, 16\)"):
        head(torch.rand(3, 40), torch.randn(2, 16))
    with pytest.raises(ValueError, match="variant"):
        Head(40, 16, 32, variant="fancy")
    # fp16 bank rows cast by the caller are accepted
    assert head(torch.rand(3, 40).half().float(), torch.randn(3, 16).half().float()).shape == (3, 16)


@pytest.mark.parametrize("feature_norm", [False, True])
def test_pca_head_init_is_exactly_gist_plus_scaled_projection(feature_norm):
    """After init the head computes g + λ·P(f̂ − μ), P the top-E principal directions (checked against an SVD
    written here), and λ makes the backbone part's RMS norm `weight` × gist256's."""
    torch.manual_seed(2)
    n, d, e = 200, 40, 8
    basis = torch.randn(d, d)
    feat = (torch.randn(n, d) * torch.linspace(3, 0.1, d)) @ basis.T + 5  # (N, D) distinct variances
    g = 0.3 * torch.randn(n, e)
    head = Head(feature_dim=d, descriptor_dim=e, hidden=24, scale=0.01, feature_norm=feature_norm)
    lam = init_heads_from_pca([head], feat, g, weight=2.5)

    x = (torch.nn.functional.normalize(feat.double(), dim=1) if feature_norm else feat.double())
    centred = x - x.mean(0)
    _, _, vt = torch.linalg.svd(centred, full_matrices=False)
    z = centred @ vt[:e].T  # (N, E), principal coordinates up to sign
    with torch.no_grad():
        backbone_part = (head(feat, g) - g).double()  # (N, E)
    # the same coordinates up to each axis' sign
    signs = torch.sign((backbone_part * z).sum(0))
    assert torch.allclose(backbone_part, lam * z * signs, atol=1e-4 * lam)
    ratio = backbone_part.pow(2).sum(1).mean().sqrt() / g.double().pow(2).sum(1).mean().sqrt()
    assert ratio.item() == pytest.approx(2.5, rel=1e-4)
    # the other H − 2E hidden units start with zero output weights
    assert head.ffn[2].weight[:, 2 * e:].abs().sum() == 0
    with pytest.raises(ValueError, match="at least 8 training images"):
        init_heads_from_pca([head], feat[:5], g[:5], weight=1.0)
    other = Head(feature_dim=d, descriptor_dim=e, hidden=24, scale=0.01, feature_norm=not feature_norm)
    with pytest.raises(ValueError, match="must share"):
        init_heads_from_pca([head, other], feat, g, weight=1.0)


def test_model_config():
    cfg = ModelConfig()
    assert (cfg.backbone, cfg.weights, cfg.descriptor_dim, cfg.head_scale, cfg.variant) == \
        ("efficientnet_lite0", "imagenet", 256, 0.01, "paper")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden = 3
    with pytest.raises(ValueError, match="variant"):
        ModelConfig(variant="paperish")
    with pytest.raises(ValueError, match="hidden"):
        ModelConfig(hidden=0)
    with pytest.raises(ValueError, match="head_init"):
        ModelConfig(head_init="zeros")
    with pytest.raises(ValueError, match=r"hidden >= 2 x descriptor_dim \(512\)"):
        ModelConfig(head_init="pca", hidden=500)


@pytest.fixture(scope="module")
def qk():
    return build_qk_models(ModelConfig(hidden=64), seed=7)


def test_features_normalize_inside(qk):
    q, _ = qk
    q.eval()
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(q.features(pixels), q.backbone((pixels * 255 - 127) / 128), atol=1e-5)
        desc = q(pixels, torch.randn(2, 256))
    assert desc.shape == (2, 256)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        q.features(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        q.features(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_autocast_descriptor_is_float32(qk):
    q, _ = qk
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        desc = q(torch.rand(2, 3, 64, 64), torch.randn(2, 256))
    assert desc.dtype == torch.float32


def test_q_k_heads_differ_backbones_equal(qk):
    q, k = qk
    assert q.backbone is not k.backbone
    qs, ks = q.backbone.state_dict(), k.backbone.state_dict()
    assert all(torch.equal(qs[n], ks[n]) for n in qs)
    assert not torch.equal(q.head.ffn[0].weight, k.head.ffn[0].weight)
    assert param_fingerprint(q.backbone) == param_fingerprint(k.backbone)
    assert param_fingerprint(q.head) != param_fingerprint(k.head)
    # reproducible from the seed, and a different seed gives different heads
    q2, k2 = build_qk_models(ModelConfig(hidden=64), seed=7)
    assert param_fingerprint(q2) == param_fingerprint(q) and param_fingerprint(k2) == param_fingerprint(k)
    q3, _ = build_qk_models(ModelConfig(hidden=64), seed=8)
    assert param_fingerprint(q3.head) != param_fingerprint(q.head)
    assert part_seed(7, "q_head") != part_seed(7, "k_head")


def test_param_fingerprint():
    a = nn.Linear(3, 2)
    fp = param_fingerprint(a)
    assert len(fp) == 16 and int(fp, 16) >= 0
    b = nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert param_fingerprint(b) == fp
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert param_fingerprint(b) != fp
    assert param_fingerprint(a.half()) != fp  # dtype is part of the identity


def _bn_snapshot(model):
    return {f"{name}.{k}": v.clone() for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
            for k, v in m.state_dict().items()}


def test_batchnorm_stays_frozen_through_training_step():
    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0")
    model = DescriptorModel(backbone, Head(1280, 256, 64), (0.5,) * 3, (0.25,) * 3)
    before = _bn_snapshot(model)
    conv_before = model.backbone.conv_head.weight.clone()
    head_before = model.head.ffn[2].weight.clone()
    model.train()
    assert model.training and model.head.training
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 49 and not any(m.training for m in bns)
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    opt = torch.optim.AdamW([p for p in model.parameters()], lr=1e-2, weight_decay=0.1)
    loss = model(torch.rand(2, 3, 64, 64), torch.randn(2, 256)).pow(2).sum()
    loss.backward()
    opt.step()
    after = _bn_snapshot(model)
    assert before.keys() == after.keys() and len(before) == 49 * 5
    assert all(torch.equal(before[n], after[n]) for n in before)  # stats, affine and num_batches_tracked
    assert not torch.equal(conv_before, model.backbone.conv_head.weight)
    assert not torch.equal(head_before, model.head.ffn[2].weight)


def test_freeze_and_unfreeze_backbone(qk):
    q, _ = qk
    q.freeze_backbone()
    assert not any(p.requires_grad for p in q.backbone.parameters())
    assert all(p.requires_grad for p in q.head.parameters())
    q.unfreeze_backbone()
    assert q.backbone.conv_head.weight.requires_grad
    assert not q.backbone.bn2.weight.requires_grad and not q.backbone.bn2.training
    seq = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    freeze_batchnorm(seq)
    assert seq[0].training and not seq[1].training and not seq[1].weight.requires_grad
