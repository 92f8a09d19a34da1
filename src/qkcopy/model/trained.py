"""A trained run as users load it: Q for queries, K for references, gist256, and their fingerprint.

`load_trained` reads what `qkcopy train` leaves in a run directory (config.yaml, gist_pca.safetensors,
checkpoints/…) without pickle; every inference command (embed, index, search, eval, export, serve) starts here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

from qkcopy import checkpoint as ckpt
from qkcopy.config import TrainConfig, load_config
from qkcopy.device import resolve_device
from qkcopy.errors import CheckpointError
from qkcopy.model.descriptor import DescriptorModel, build_qk_models, param_fingerprint
from qkcopy.model.gist256 import Gist256
from qkcopy.model.pca import PCA


@dataclasses.dataclass(frozen=True)
class TrainedModels:
    """What a finished (or checkpointed) run gives a user: Q for queries, K for references, and gist256."""

    q: DescriptorModel
    k: DescriptorModel
    gist256: Gist256
    cfg: TrainConfig
    checkpoint: Path

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
