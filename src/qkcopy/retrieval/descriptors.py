"""Descriptor files: the ISC2021 HDF5 layout, and a plain `.npy` + ids text pair.

ISC2021 h5 (as facebookresearch/isc2021 writes and reads it): dataset `vectors` (N, E) float32 and dataset
`image_names` (N,) of byte strings, one image id per row, in the same order. Ids are written UTF-8 encoded
(plain ASCII for the usual DISC21 ids such as Q00001 / R000001); variable-length str datasets are read too.

Letters: N images, E descriptor dim.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
from qkcopy.errors import DescriptorError
from qkcopy.io import atomic_path

log = logging.getLogger(__name__)

VECTORS = "vectors"
IMAGE_NAMES = "image_names"


def write_isc_h5(path: str | os.PathLike, ids: Sequence[str], vectors: np.ndarray) -> None:
    """Write descriptors in the ISC2021 h5 layout (atomic: temp file in the same folder, then rename)."""
    path = Path(path)
    ids = _check(ids, vectors, source="write_isc_h5")
    names = np.array([s.encode("utf-8") for s in ids], dtype=f"S{max([len(s.encode()) for s in ids] + [1])}")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(VECTORS, data=np.ascontiguousarray(vectors, dtype=np.float32))
            f.create_dataset(IMAGE_NAMES, data=names)
    log.info("wrote %d descriptors (E=%d) to %s", len(ids), vectors.shape[1], path)


def read_isc_h5(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read an ISC2021 h5 descriptor file: (ids, vectors (N, E) float32)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such descriptor file: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DescriptorError(f"{path} is not a readable HDF5 file ({err})", path) from None
    with f:
        missing = [k for k in (VECTORS, IMAGE_NAMES) if k not in f]
        if missing:
            raise DescriptorError(f"{path} lacks dataset(s) {missing}; found {sorted(f.keys())} "
                                  f"(an ISC2021 descriptor file holds '{VECTORS}' and '{IMAGE_NAMES}')", path)
        try:
            vectors = np.asarray(f[VECTORS][()])
            raw = f[IMAGE_NAMES][()]
        except (OSError, TypeError, ValueError) as err:  # a truncated or damaged dataset
            raise DescriptorError(f"{path}: damaged descriptor file ({err}); embed the images again", path) from None
    if vectors.dtype.kind != "f":
        raise ValueError(f"{path}: '{VECTORS}' must be floating point, got {vectors.dtype}")
    ids = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in np.asarray(raw).ravel()]
    ids = _check(ids, vectors.astype(np.float32, copy=False), source=str(path))
    return ids, vectors.astype(np.float32, copy=False)


def write_npy(dir_or_prefix: str | os.PathLike, ids: Sequence[str], vectors: np.ndarray) -> Path:
    """Write `<prefix>.npy` (N, E) float32 and `<prefix>_ids.txt` (one id per line); returns the prefix.

    A directory (existing, or given with a trailing slash) means the prefix `<dir>/descriptors`.
    """
    prefix = _prefix(dir_or_prefix)
    ids = _check(ids, vectors, source="write_npy")
    bad = [s for s in ids if "\n" in s or "\r" in s]
    if bad:
        raise ValueError(f"id {bad[0]!r} holds a line break and cannot go in {prefix}_ids.txt")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(f"{prefix}.npy")) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(vectors, dtype=np.float32))
    with atomic_path(Path(f"{prefix}_ids.txt")) as tmp:
        Path(tmp).write_text("".join(s + "\n" for s in ids), encoding="utf-8")
    log.info("wrote %d descriptors (E=%d) to %s.npy", len(ids), vectors.shape[1], prefix)
    return prefix


def read_npy(dir_or_prefix: str | os.PathLike, mmap: bool = False) -> tuple[list[str], np.ndarray]:
    """Read what `write_npy` wrote: (ids, vectors (N, E) float32); `mmap`: vectors memory-mapped, read-only."""
    prefix = _prefix(dir_or_prefix)
    npy, txt = Path(f"{prefix}.npy"), Path(f"{prefix}_ids.txt")
    for p in (npy, txt):
        if not p.is_file():
            raise FileNotFoundError(f"no such descriptor file: {p}")
    try:
        vectors = np.load(npy, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, EOFError, OSError) as err:  # truncated, damaged, or an object array
        raise DescriptorError(f"{npy}: damaged descriptor file ({type(err).__name__}: {err}); embed the images "
                              "again with `qkcopy embed`", npy) from None
    try:
        ids = txt.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DescriptorError(f"{txt}: damaged id list (not UTF-8 text)", txt) from None
    if vectors.dtype != np.float32:
        raise ValueError(f"{npy}: expected float32 vectors, got {vectors.dtype}")
    return _check(ids, vectors, source=str(npy)), vectors


FINITE_CHUNK = 1 << 20  # rows checked for NaN/inf at a time


def _check(ids: Sequence[str], vectors: np.ndarray, source: str) -> list[str]:
    """Validate ids against vectors (N, E); returns the ids as a list of str."""
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or vectors.dtype != np.float32:
        raise ValueError(f"{source}: vectors must be a float32 array of shape (N, E), got "
                         f"{getattr(vectors, 'shape', type(vectors).__name__)} {getattr(vectors, 'dtype', '')}")
    ids = list(ids)
    if len(ids) != len(vectors):
        raise ValueError(f"{source}: {len(ids)} ids for {len(vectors)} vectors")
    for s in ids:
        if not isinstance(s, str) or not s:
            raise ValueError(f"{source}: ids must be non-empty strings, got {s!r}")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(s for s in ids if s in seen or seen.add(s))
        raise ValueError(f"{source}: id {dup} appears more than once")
    step = FINITE_CHUNK  # a memory-mapped file is never read whole
    bad = np.concatenate([np.zeros(0, np.int64)] + [s + np.flatnonzero(~np.isfinite(vectors[s:s + step]).all(axis=1))
                                                   for s in range(0, len(vectors), step)])
    if bad.size:
        raise ValueError(f"{source}: descriptor of {ids[bad[0]]} has non-finite values ({bad.size} such rows)")
    return ids


def _prefix(dir_or_prefix: str | os.PathLike) -> Path:
    p = Path(dir_or_prefix)
    if p.is_dir() or str(dir_or_prefix).endswith(("/", os.sep)):
        return p / "descriptors"
    return p.with_suffix("") if p.suffix == ".npy" else p

