"""The region table `qkcopy embed --regions N` writes beside a folder's query descriptors: PREFIX.regions.h5.

Letters: N images, T region rows over all images (each image 1 + at most n), E descriptor dim.

Datasets: `image_names` (N,) UTF-8 byte strings, the images in the order of PREFIX.h5; `owner` (T,) int64, the
row of `image_names` each region belongs to, non-decreasing; `boxes` (T, 4) int64 (x0, y0, x1, y1) in the
image's pixels, x1 and y1 exclusive, an image's first row being the whole image; `vectors` (T, E) float32, the
Q descriptor of each region (an image's first row equals its row of PREFIX.h5). Attributes: `fingerprint`,
`regions` (n), `input_size`, `region_size`. The same rows `qkcopy eval --regions n` and `qkcopy search
--regions n` compute (`TrainedModels.describe_regions`); a pair's score is the best over an image's rows
(`qkcopy.evaluation.region_search`).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from qkcopy.errors import DescriptorError
from qkcopy.io import atomic_path
from qkcopy.model.regions import RegionEmbeddings

SUFFIX = ".regions.h5"


def region_table_path(prefix: str | os.PathLike) -> Path:
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + SUFFIX)


def write_region_table(prefix: str | os.PathLike, emb: RegionEmbeddings, fingerprint: str, regions: int,
                       input_size: int, region_size: int) -> Path:
    """Write `emb` to PREFIX.regions.h5 (atomic: a temp file in the same folder, then a rename)."""
    path = region_table_path(prefix)
    names = np.array([s.encode("utf-8") for s in emb.ids],
                     dtype=f"S{max([len(s.encode()) for s in emb.ids] + [1])}")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("image_names", data=names)
            f.create_dataset("owner", data=emb.owner.astype(np.int64))
            f.create_dataset("boxes", data=emb.boxes.astype(np.int64))
            f.create_dataset("vectors", data=np.ascontiguousarray(emb.vectors, dtype=np.float32))
            f.attrs.update(fingerprint=fingerprint, regions=int(regions), input_size=int(input_size),
                           region_size=int(region_size))
    return path


def read_region_table(path: str | os.PathLike, fingerprint: str | None = None) -> tuple[RegionEmbeddings, dict]:
    """(the table as RegionEmbeddings, its attributes); refuses a damaged file or another model's table."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such region table: {path} (write one with `qkcopy embed --regions N`)")
    try:
        with h5py.File(path, "r") as f:
            ids = [s.decode("utf-8") for s in f["image_names"][()]]
            owner, boxes, vectors = f["owner"][()], f["boxes"][()], f["vectors"][()]
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    except (OSError, KeyError, UnicodeDecodeError) as err:
        raise DescriptorError(f"{path}: damaged region table ({type(err).__name__}: {err}); write it again with "
                              "`qkcopy embed --regions N`", path) from None
    if fingerprint is not None and attrs.get("fingerprint") != fingerprint:
        raise DescriptorError(f"{path} was made by model {attrs.get('fingerprint')}, not {fingerprint}: embed the "
                              "images again with this model", path)
    if len(owner) and (owner.min() < 0 or owner.max() >= len(ids) or np.any(np.diff(owner) < 0)):
        raise DescriptorError(f"{path}: damaged region table (owner rows out of order or range)", path)
    emb = RegionEmbeddings(ids, vectors.astype(np.float32), owner.astype(np.int64), boxes.astype(np.int64), [])
    return emb, attrs
