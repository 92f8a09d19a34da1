"""gist256: lear_gist's 960-d GIST, L2-normalised, reduced to 256 dims by a PCA fitted on training images.

Letters: B batch, N images, G = 256 gist256 dim.

This is the GIST half of every qkcopy descriptor (`desc = gist256 + 0.01 · head(…)`) and, alone, the ISC2021
GIST baseline. The PCA is fitted once per run on training images only, never on references; the trainer and
the `gist` baseline both fit it with `fit_gist256`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from qkcopy.data.images import SkipLog, iter_images
from qkcopy.model.gist import Gist, compute_gist
from qkcopy.model.pca import PCA

log = logging.getLogger(__name__)


def unit_gist(gist: torch.Tensor) -> torch.Tensor:
    """L2-normalise GIST rows (B, 960) before the PCA, as the ISC2021 GIST baseline does ("normalization is
    important"): it puts distances on the scale that τ = 0.07 and the 0.01 head scale of the paper assume."""
    return torch.nn.functional.normalize(gist.float(), dim=1)  # (B, 960) float32


class Gist256(torch.nn.Module):
    """GIST (lear_gist, 960-d), L2-normalised, then PCA to 256 without whitening:
    gist pixels (B, 3, 32, 32) → (B, G)."""

    def __init__(self, pca: PCA):
        super().__init__()
        self.gist = Gist()
        self.pca = pca.as_module()
        self.fingerprint = pca.fingerprint()

    @torch.no_grad()
    def forward(self, gist_pixels: torch.Tensor) -> torch.Tensor:
        return self.pca(unit_gist(self.gist(gist_pixels.float())))  # (B, G) float32


def gist_descriptors(paths: Sequence[Path], skips: SkipLog, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm GIST of the readable images of `paths`: (vecs (K, 960) float32, kept (K,) int64 indices)."""
    kept: list[int] = []

    def readable():
        for i, _path, img in iter_images(paths, skips):
            kept.append(i)
            yield img

    vecs = compute_gist(readable(), batch_size=batch_size)  # (K, 960) float32
    return unit_gist(torch.from_numpy(vecs)).numpy(), np.asarray(kept, dtype=np.int64)


def fit_gist256(paths: Sequence[Path], n_images: int, seed: int, dim: int = 256, batch_size: int = 256,
                skips: SkipLog | None = None) -> PCA:
    """Fit the GIST PCA (960 → dim) on at most `n_images` of the TRAINING images `paths` (a seeded subset, in
    path order); unreadable ones are skipped into `skips`."""
    if min(n_images, len(paths)) < dim:
        raise ValueError(f"the GIST PCA to {dim} dims needs at least {dim} training images, got "
                         f"{min(n_images, len(paths))}; add training images")
    chosen = sorted(np.random.default_rng(seed).choice(len(paths), size=min(n_images, len(paths)),
                                                       replace=False).tolist())
    own = SkipLog() if skips is None else skips
    vecs, _ = gist_descriptors([paths[i] for i in chosen], own, batch_size)
    if skips is None:
        own.report(log, "training images (GIST PCA)")
    return PCA.fit(vecs, dim=dim)
