"""Bulk embedding: a descriptor model over a list of images, batched, multi-worker, bad files skipped.

Letters: N images, B batch, E descriptor dim.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from qkcopy.data.training import image_pair
from qkcopy.model.gist256 import Gist256
from qkcopy.data.images import ImageDataset, SkipLog, collate_skipping
from qkcopy.device import autocast

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embeddings:
    ids: list[str]  # file stems of the images that loaded, in input order
    vectors: np.ndarray  # (N, E) float32
    skipped: list[str]  # paths that could not be read


@torch.no_grad()
def embed_paths(model: torch.nn.Module, gist256: Gist256, paths: Sequence[Path], image_size: int,
                batch_size: int = 64, workers: int = 2, device: torch.device | str = "cpu",
                desc: str = "embedding") -> Embeddings:
    """Descriptors (N, E) of `paths` with `model(pixels, g256)`; unreadable files are skipped and reported."""
    device = torch.device(device)
    dataset = ImageDataset(paths, functools.partial(image_pair, size=image_size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_skipping, persistent_workers=False)
    model.eval().to(device)
    gist256.to(device)
    kept, chunks, skipped = [], [], []
    for indices, data, bad in tqdm(loader, desc=desc, unit="batch", leave=False):
        skipped.extend(bad)
        if data is None:
            continue
        pixels, gist_pixels = (t.to(device, non_blocking=True) for t in data)
        with autocast(device):
            vectors = model(pixels, gist256(gist_pixels))  # (B, E)
        chunks.append(vectors.float().cpu().numpy())
        kept.extend(indices.tolist())
    skips = SkipLog()
    dataset.record_skips(skipped, skips)
    skips.report(log, f"images ({desc})")
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return Embeddings([Path(paths[i]).stem for i in kept], vectors.astype(np.float32),
                      [str(paths[i]) for i in skipped])
