"""A trained run as users load it: Q for queries, K for references, gist256, and their fingerprint.

`load_trained` reads what `qkcopy train` leaves in a run directory (config.yaml, gist_pca.safetensors,
checkpoints/…) without pickle; every inference command (embed, index, search, eval, export, serve) starts here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from qkcopy import checkpoint as ckpt
from qkcopy.config import TrainConfig, load_config
from qkcopy.device import resolve_device
from qkcopy.data.transforms import image_pair
from qkcopy.errors import CheckpointError
from qkcopy.model.descriptor import DescriptorModel, build_qk_models, param_fingerprint
from qkcopy.model.gist256 import Gist256
from qkcopy.model.inference import Embeddings, embed_paths
from qkcopy.model.pca import PCA
from qkcopy.model.regions import RegionEmbeddings, embed_regions


SIDES = ("query", "reference")  # Q describes queries, K references


@dataclasses.dataclass(frozen=True)
class TrainedModels:
    """What a finished (or checkpointed) run gives a user: Q for queries, K for references, and gist256.

    It owns its inference: `describe` and `prepare` use the run's own input size (`model.test_size` when set),
    device and side, as timm's `resolve_model_data_config(use_test_size=True)` lets a model carry its input.

    Example:
        >>> models = load_trained("runs/qk")
        >>> refs = models.describe("reference", ["a.jpg", "b.jpg"])  # Embeddings: ids, (2, 256) float32
    """

    q: DescriptorModel
    k: DescriptorModel
    gist256: Gist256
    cfg: TrainConfig
    checkpoint: Path

    @property
    def input_size(self) -> int:
        """Side S of the model's input at inference (the test size when the config sets one)."""
        return self.cfg.model.input_size

    @property
    def device(self) -> torch.device:
        return next(self.q.parameters()).device

    def model(self, side: str) -> DescriptorModel:
        """Q for "query", K for "reference"."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        return self.q if side == "query" else self.k

    def prepare(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoded image → (model input (3, S, S), GIST input (3, 32, 32)) at this model's input size."""
        return image_pair(img, self.input_size)

    def describe(self, side: str, paths: Sequence[str | Path], batch_size: int = 64, workers: int = 2,
                 desc: str | None = None) -> Embeddings:
        """Descriptors of image files with Q ("query") or K ("reference").

        Args:
            side: "query" or "reference".
            paths: image files; unreadable ones are skipped, named in one warning and listed in `skipped`.
            batch_size, workers: the loader's batch and worker processes.
            desc: the progress bar's label (default: the side).
        Returns:
            `Embeddings`: ids (file stems, input order), vectors (N, E) float32, skipped paths.
        Raises:
            ValueError: an unknown side.
        """
        model = self.model(side)
        return embed_paths(model, self.gist256, [Path(p) for p in paths], self.input_size, batch_size=batch_size,
                           workers=workers, device=self.device, desc=desc or f"{side} images")

    def describe_regions(self, paths: Sequence[str | Path], n: int, batch_size: int = 64, workers: int = 2,
                         desc: str | None = None, region_size: int | None = None) -> RegionEmbeddings:
        """Q descriptors of each query image and of `n` regions proposed in it (`qkcopy.model.regions`): the
        whole image first (at the model's input size), then the regions (at `region_size`, default the same),
        with their boxes in the image's pixels. References stay whole."""
        return embed_regions(self.q, self.gist256, [Path(p) for p in paths], self.input_size, n,
                             batch_size=batch_size, workers=workers, device=self.device,
                             desc=desc or "query regions", region_size=region_size)

    def query_regions(self, regions: int | None = None, margin: float | None = None,
                      size: int | None = None) -> tuple[int, float, int | None]:
        """(count, margin, side) of the query regions at inference: each value given, else the run's own
        (`model.regions`, `model.region_margin`, `model.region_size`); a side of 0 or None is the input side (None)."""
        own = self.cfg.model
        return (own.regions if regions is None else regions, own.region_margin if margin is None else margin,
                (own.region_size if size is None else size) or None)

    @property
    def fingerprint(self) -> str:
        """Identifies the exact (Q, K, PCA) weights and the inference input size (when it is not the training
        size): an index built with one refuses queries from another."""
        size = f"/{self.cfg.model.input_size}" if self.cfg.model.input_size != self.cfg.model.image_size else ""
        return hashlib.sha256(f"{param_fingerprint(self.q)}/{param_fingerprint(self.k)}/"
                              f"{self.gist256.fingerprint}{size}".encode()).hexdigest()[:16]


def load_trained(path: str | Path, device: str = "cpu", test_size: int | None = None) -> TrainedModels:
    """Load a run directory (its latest checkpoint) or a checkpoint directory inside one; `test_size` replaces
    the run's inference input size (`model.test_size`)."""
    path = Path(path)
    run_dir = path if (path / "config.yaml").exists() else path.parent.parent
    checkpoint = path / "checkpoints" / "latest" if path == run_dir else path
    if not (run_dir / "config.yaml").exists() or not (run_dir / "gist_pca.safetensors").exists():
        raise FileNotFoundError(f"{path} is not a qkcopy run directory or checkpoint (expected config.yaml "
                                "and gist_pca.safetensors in the run directory)")
    checkpoint = ckpt.readable(checkpoint)  # a trainer killed inside its checkpoint swap: the previous one
    if not checkpoint.is_dir():
        raise CheckpointError(f"{run_dir} has no checkpoint yet ({checkpoint} is missing): train it further, or "
                              "give a checkpoint folder such as RUN/checkpoints/Q1", checkpoint)
    cfg = load_config(run_dir / "config.yaml")  # a damaged file: a ConfigError naming it
    if test_size is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, test_size=test_size))
    quiet = logging.getLogger("qkcopy.model.backbone")
    level, _ = quiet.level, quiet.setLevel(logging.ERROR)  # no "random weights" warning: they are loaded next
    try:
        q, k = build_qk_models(dataclasses.replace(cfg.model, weights=None), cfg.seed)
    finally:
        quiet.setLevel(level)
    ckpt.load_weights(checkpoint, {"q": q, "k": k})
    gist256 = Gist256(PCA.load(run_dir / "gist_pca.safetensors"))
    dev = resolve_device(device)
    return TrainedModels(q.eval().to(dev), k.eval().to(dev), gist256.to(dev), cfg, checkpoint)
