"""PCA 960 → 256 of GIST descriptors, no whitening (the ISC2021 GIST baseline's reduction).

The projection is z = (x − mean) · componentsᵀ with orthonormal components (the top eigenvectors of the
covariance, in decreasing order of variance). It is fitted once in float64 from the covariance matrix
(eigh is exact enough and needs only D × D memory however many rows there are) and then frozen.

Fit it on TRAINING images only, never on reference or query images of an evaluation set: that would leak
the evaluation distribution into the descriptor. Choosing the rows is the caller's job; `fingerprint()`
identifies a fitted PCA in run records so the provenance can be checked.

Letters: N rows, D input dim (960), E output dim (256), B batch.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from qkcopy.io import atomic_write

logger = logging.getLogger(__name__)

PCA_DIM = 256
_FORMAT = "qkcopy.pca/1"
_CHUNK = 65536  # rows per covariance update


def _check_rows(x: np.ndarray, d: int, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != d:
        got = x.shape if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{what} expects an (N, {d}) array, got {got}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} expects floating-point rows, got dtype {x.dtype}")
    return x


@dataclass(frozen=True, eq=False)
class PCA:
    """A fitted projection: mean (D,), components (E, D) orthonormal rows, explained variance (E,)."""

    mean: np.ndarray  # (D,) float32
    components: np.ndarray  # (E, D) float32
    explained_variance: np.ndarray  # (E,) float32, eigenvalues of the covariance (ddof = 1)

    def __post_init__(self) -> None:
        e, d = self.components.shape if self.components.ndim == 2 else (-1, -1)
        if self.components.ndim != 2 or self.mean.shape != (d,) or self.explained_variance.shape != (e,):
            raise ValueError(
                f"PCA arrays must be mean (D,), components (E, D), explained_variance (E,); got "
                f"{self.mean.shape}, {self.components.shape}, {self.explained_variance.shape}"
            )

    @property
    def in_dim(self) -> int:
        return self.components.shape[1]

    @property
    def out_dim(self) -> int:
        return self.components.shape[0]

    @classmethod
    def fit(cls, x: np.ndarray, dim: int = PCA_DIM) -> PCA:
        """Fit on rows x (N, D), N >= dim, in float64. Component signs: largest-|entry| positive."""
        if not isinstance(x, np.ndarray) or x.ndim != 2:
            raise ValueError(f"PCA.fit expects an (N, D) array, got {getattr(x, 'shape', type(x).__name__)}")
        n, d = _check_rows(x, x.shape[1], "PCA.fit").shape
        if not 1 <= dim <= d:
            raise ValueError(f"PCA dim must be in 1..{d} for {d}-dim rows, got {dim}")
        if n < dim:
            raise ValueError(f"PCA.fit needs at least dim={dim} rows to estimate {dim} components, got {n}")
        if not np.isfinite(x).all():
            raise ValueError("PCA.fit: input contains NaN or inf rows")
        mean = x.mean(axis=0, dtype=np.float64)  # (D,)
        cov = np.zeros((d, d), dtype=np.float64)
        for start in range(0, n, _CHUNK):
            xc = x[start : start + _CHUNK].astype(np.float64) - mean  # (chunk, D)
            cov += xc.T @ xc
        cov /= max(n - 1, 1)
        eigval, eigvec = np.linalg.eigh(cov)  # ascending
        order = np.argsort(eigval)[::-1][:dim]
        comps = eigvec[:, order].T  # (E, D)
        pivot = np.abs(comps).argmax(axis=1)
        comps *= np.sign(comps[np.arange(dim), pivot])[:, None]
        var = np.clip(eigval[order], 0.0, None)
        total = float(np.clip(eigval, 0.0, None).sum())
        logger.info("PCA %d -> %d on %d rows keeps %.1f%% of the variance", d, dim, n,
                    100.0 * var.sum() / total if total > 0 else 100.0)
        return cls(mean.astype(np.float32), comps.astype(np.float32), var.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, E) float32, computed in float64."""
        _check_rows(x, self.in_dim, "PCA.transform")
        z = (x.astype(np.float64) - self.mean.astype(np.float64)) @ self.components.T.astype(np.float64)
        return z.astype(np.float32)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """(N, E) -> (N, D) float32: the projection of the rows back in input space."""
        _check_rows(z, self.out_dim, "PCA.inverse_transform")
        x = z.astype(np.float64) @ self.components.astype(np.float64) + self.mean.astype(np.float64)
        return x.astype(np.float32)

    def fingerprint(self) -> str:
        """First 12 hex digits of sha256 over the float32 bytes of mean and components."""
        h = hashlib.sha256()
        for a in (self.mean, self.components):
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
        return h.hexdigest()[:12]

    def save(self, path: str | Path) -> Path:
        """Write a .safetensors file atomically (temp file in the same directory, then os.replace)."""
        arrays = {"mean": self.mean, "components": self.components, "explained_variance": self.explained_variance}
        meta = {"format": _FORMAT, "fingerprint": self.fingerprint()}
        tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> PCA:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"PCA file not found: {path}")
        try:
            arrays = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a readable safetensors PCA file: {err}") from err
        missing = {"mean", "components", "explained_variance"} - arrays.keys()
        if missing:
            raise ValueError(f"{path} lacks PCA arrays {sorted(missing)}")
        return cls(arrays["mean"], arrays["components"], arrays["explained_variance"])

    def as_module(self) -> PCAProjection:
        return PCAProjection(self.mean, self.components)


class PCAProjection(torch.nn.Module):
    """Frozen PCA as a layer: forward (B, D) -> (B, E) = (x − mean) · componentsᵀ, always in float32.

    mean and components are persistent buffers (saved in the model's state_dict, never trained). Use
    autocast for mixed precision (disabled inside forward), not module.half(), which would round them.
    """

    def __init__(self, mean: np.ndarray, components: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float32)).clone())
        self.register_buffer("components", torch.as_tensor(np.asarray(components, dtype=np.float32)).clone())

    def extra_repr(self) -> str:
        return f"in_dim={self.components.shape[1]}, out_dim={self.components.shape[0]}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.components.shape[1]
        if x.ndim != 2 or x.shape[1] != d or not x.is_floating_point():
            raise ValueError(f"PCAProjection expects a (B, {d}) float tensor, got {tuple(x.shape)} {x.dtype}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            return (x.to(torch.float32) - self.mean) @ self.components.T  # (B, E) float32
