"""Region descriptors of query images: the whole image plus the regions `qkcopy.data.regions` proposes, each
described by the same model as a whole image (its crop resized to the model's input), in batches.

Letters: N images, T region rows over all images (each image 1 + at most n), E descriptor dim, S input size.

References are not split: they keep one K descriptor each, so an index does not grow. A query's score against
a reference is the best over its regions (`qkcopy.evaluation.region_search`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from qkcopy.data.images import ImageDataset, SkipLog
from qkcopy.data.regions import propose_regions
from qkcopy.data.transforms import image_pair
from qkcopy.model.gist256 import Gist256
from qkcopy.model.inference import Embeddings, describe_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionEmbeddings:
    ids: list[str]  # (N,) file stems of the images that loaded, in input order
    vectors: np.ndarray  # (T, E) float32, one row per region
    owner: np.ndarray  # (T,) int64: the row of `ids` each region belongs to, non-decreasing
    boxes: np.ndarray  # (T, 4) int64 (x0, y0, x1, y1) in the image's pixels; an image's first row is the whole
    skipped: list[str]  # paths that could not be read

    def __post_init__(self) -> None:
        t = len(self.vectors)
        if self.vectors.ndim != 2 or self.owner.shape != (t,) or self.boxes.shape != (t, 4):
            raise ValueError(f"RegionEmbeddings: expected vectors (T, E), owner (T,), boxes (T, 4), got "
                             f"{self.vectors.shape}, {self.owner.shape}, {self.boxes.shape}")

    def whole(self) -> Embeddings:
        """The whole-image rows only: what `describe` gives without regions."""
        first = np.r_[True, self.owner[1:] != self.owner[:-1]] if len(self.owner) else np.zeros(0, bool)
        return Embeddings(list(self.ids), self.vectors[first], list(self.skipped))

    @property
    def per_image(self) -> float:
        """Regions described per image, the whole included."""
        return len(self.owner) / max(1, len(self.ids))


class RegionCrops:
    """Dataset transform: an image → (boxes (R, 4) int64, whole-image input (1, 3, S, S), region inputs
    (R − 1, 3, S', S') at the regions' own side S', GIST inputs (R, 3, 32, 32))."""

    def __init__(self, n: int, size: int, region_size: int):
        self.n, self.size, self.region_size = n, size, region_size

    def __call__(self, img: Image.Image):
        boxes = propose_regions(img, self.n)  # (R, 4)
        pairs = [image_pair(img.crop(tuple(int(v) for v in box)), self.size if i == 0 else self.region_size)
                 for i, box in enumerate(boxes)]
        regions = torch.stack([p for p, _ in pairs[1:]]) if len(pairs) > 1 else \
            torch.zeros(0, 3, self.region_size, self.region_size)
        return (torch.from_numpy(boxes), pairs[0][0][None], regions, torch.stack([g for _, g in pairs]))


class RegionCollate:
    """Concatenate the images' regions into one batch of crops; gist256 computed here when given (workers)."""

    def __init__(self, gist256: Gist256 | None):
        self.gist256 = gist256

    def __call__(self, items):
        kept = [(i, v) for i, v in items if v is not None]
        bad = [int(i) for i, v in items if v is None]
        if not kept:
            return [], None, bad
        owner = torch.cat([torch.full((len(v[0]),), i, dtype=torch.long) for i, v in kept])  # (T_b,)
        whole = torch.cat([torch.arange(len(v[0])) == 0 for _, v in kept])  # (T_b,) bool: the whole-image rows
        boxes, wholes, regions, gist = (torch.cat([v[k] for _, v in kept]) for k in range(4))
        if self.gist256 is not None:
            with torch.no_grad():
                gist = self.gist256(gist)  # (T_b, G)
        return owner, (boxes, whole, wholes, regions, gist), bad


@torch.no_grad()
def embed_regions(model: torch.nn.Module, gist256: Gist256, paths: Sequence[Path], image_size: int, n: int,
                  batch_size: int = 64, workers: int = 2, device: torch.device | str = "cpu",
                  desc: str = "regions", region_size: int | None = None) -> RegionEmbeddings:
    """Descriptors of each image (at `image_size`) and of its `n` proposed regions (at `region_size`, default
    `image_size`: a smaller side makes regions cheaper) with `model(pixels, g256)`; unreadable files skipped and
    reported. `batch_size` counts crops: about batch_size / (1 + n) images a batch."""
    if n < 0:
        raise ValueError(f"the number of regions must be >= 0, got {n}")
    device = torch.device(device)
    dataset = ImageDataset(paths, RegionCrops(n, image_size, region_size or image_size))
    in_workers = device.type == "cpu" and workers > 0
    gist256.to("cpu" if in_workers else device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=max(1, batch_size // (1 + n)), num_workers=workers,
                                         collate_fn=RegionCollate(gist256 if in_workers else None))
    model.eval().to(device)
    owners, vectors, boxes, skipped = [], [], [], []
    for owner, data, bad in tqdm(loader, desc=desc, unit="batch", leave=False):
        skipped.extend(bad)
        if data is None:
            continue
        box, whole, wholes, regions, gist = data
        g256 = gist.to(device) if in_workers else gist256(gist.to(device))  # (T_b, G)
        vw = describe_batch(model, wholes.to(device), g256[whole.to(device)]).cpu()  # (B_b, E)
        vr = describe_batch(model, regions.to(device), g256[~whole.to(device)]).cpu() if len(regions) else None
        v = torch.empty(len(box), vw.shape[1])  # (T_b, E)
        v[whole] = vw
        if vr is not None:
            v[~whole] = vr
        vectors.append(v.numpy())
        owners.append(owner.numpy())
        boxes.append(box.numpy())
    skips = SkipLog()
    dataset.record_skips(skipped, skips)
    skips.report(log, f"images ({desc})")
    if not vectors:
        return RegionEmbeddings([], np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros((0, 4), np.int64),
                                [str(paths[i]) for i in skipped])
    owner = np.concatenate(owners)  # (T,) rows of `paths`
    kept, rows = np.unique(owner, return_inverse=True)  # images in input order, and each region's row in them
    return RegionEmbeddings([Path(paths[i]).stem for i in kept.tolist()],
                            np.concatenate(vectors).astype(np.float32), rows.astype(np.int64),
                            np.concatenate(boxes).astype(np.int64), [str(paths[i]) for i in skipped])
