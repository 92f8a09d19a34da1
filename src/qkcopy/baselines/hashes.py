"""Perceptual-hash and tiny-image descriptors: the non-learned baselines.

Each method maps one RGB image to a float32 vector that goes through the same faiss L2 search as the
learned descriptors:

- ``pdq``   — Meta's PDQ hash, 256 bits (``pdqhash`` package);
- ``phash`` — DCT perceptual hash, 64 bits (``imagehash`` package);
- ``tiny``  — the image shrunk to 16×16 grayscale, mean-centred and L2-normalised (256 floats).

Hash bits are stored as 0.0/1.0, so the squared L2 distance between two hash vectors equals their
Hamming distance and faiss' L2 ranking is Hamming ranking. ``pdqhash`` and ``imagehash`` are the optional
``[hashes]`` extra; they are imported when first used.

Letters: N images, E descriptor dim (256 for pdq and tiny, 64 for phash).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image
from tqdm import tqdm

from qkcopy.data.images import ImageError, SkipLog, load_image

log = logging.getLogger(__name__)

TINY_SIZE = 16  # side of the tiny-image baseline, pixels

HashFn = Callable[[Image.Image], np.ndarray]


def _optional(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"the '{module}' package is needed for this hash baseline; install the extra: "
            "pip install -e '.[hashes]'"
        ) from err


def pdq_bits(img: Image.Image) -> np.ndarray:
    """PDQ hash of an RGB image as 256 floats in {0, 1}."""
    pdqhash = _optional("pdqhash")
    bits, _quality = pdqhash.compute(np.asarray(img.convert("RGB")))
    return np.asarray(bits, dtype=np.float32)  # (256,)


def phash_bits(img: Image.Image) -> np.ndarray:
    """64-bit DCT perceptual hash (imagehash.phash, 8×8) as 64 floats in {0, 1}."""
    imagehash = _optional("imagehash")
    return imagehash.phash(img.convert("RGB")).hash.reshape(-1).astype(np.float32)  # (64,)


def tiny_vector(img: Image.Image, size: int = TINY_SIZE) -> np.ndarray:
    """The image resized (bilinear, antialiased) to size×size grayscale, mean-centred, unit L2 norm.

    A flat image (all pixels equal) has no direction; it maps to the zero vector.
    """
    small = img.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    v = np.asarray(small, dtype=np.float32).reshape(-1)  # (size*size,)
    v = v - v.mean()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


HASHES: dict[str, HashFn] = {"pdq": pdq_bits, "phash": phash_bits, "tiny": tiny_vector}
HASH_DIMS: dict[str, int] = {"pdq": 256, "phash": 64, "tiny": TINY_SIZE * TINY_SIZE}


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Number of differing bits between two 0/1 vectors (for checks and reports)."""
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two 1-d bit vectors of equal length, got {a.shape} and {b.shape}")
    return int(np.count_nonzero(a != b))


def hash_descriptors(
    method: str, paths: Sequence[Path], skips: SkipLog | None = None, desc: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Describe every image in `paths` with `method` ("pdq", "phash" or "tiny").

    Returns ``(vecs, kept)``: vecs (K, E) float32 for the K images that loaded, and kept (K,) int64, their
    indices into `paths`. Unreadable images are added to `skips` (a counted skip, never a crash).
    """
    if method not in HASHES:
        raise ValueError(f"unknown hash method {method!r}; expected one of {sorted(HASHES)}")
    fn = HASHES[method]
    if method in ("pdq", "phash"):
        _optional("pdqhash" if method == "pdq" else "imagehash")  # fail before the loop, not inside
    skips = skips if skips is not None else SkipLog()
    rows: list[np.ndarray] = []
    kept: list[int] = []
    for i, path in enumerate(tqdm(paths, desc=desc or method, unit="img", leave=False)):
        try:
            img = load_image(path)
        except ImageError as err:
            skips.add(err)
            continue
        rows.append(fn(img))
        kept.append(i)
    dim = HASH_DIMS[method]
    vecs = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)  # (K, E)
    return vecs, np.asarray(kept, dtype=np.int64)
