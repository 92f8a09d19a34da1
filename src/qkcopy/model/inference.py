"""A descriptor model's inference over image files: batched, multi-worker, bad files skipped.

Letters: N images, B batch, S input size, E descriptor dim.

`embed_paths` is the one embedding loop (a bare model and an input size: benchmarks of raw backbones call it).
`describe_batch` is the one model call of inference: on the CPU it runs a batch in cache-sized chunks.
A trained run describes its images through `TrainedModels.describe`, which knows its own input size, device
and sides: no caller passes a bare size.
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

from qkcopy.data.images import ImageDataset, SkipLog, collate_skipping
from qkcopy.data.transforms import image_pair
from qkcopy.device import autocast
from qkcopy.model.gist256 import Gist256

log = logging.getLogger(__name__)

# On the CPU a model call holds at most this many input pixels per thread (6 images at 128 px, 2 at 192 px):
# EfficientNet-Lite0 on one thread takes 17 ms an image at 192 px in calls of 1–3 images, 24 ms in calls of 16
# and 35 ms in calls of 64 (its activations leave the cache); docs/RESULTS.md, "Regions and verification".
CPU_PIXELS_PER_THREAD = 6 * 128 * 128


def describe_batch(model: torch.nn.Module, pixels: torch.Tensor, g256: torch.Tensor) -> torch.Tensor:
    """`model(pixels (B, 3, S, S), g256 (B, G))` → (B, E) float32, under the device's autocast; on the CPU in
    chunks of at most `CPU_PIXELS_PER_THREAD` × threads input pixels (the same rows up to float32 rounding:
    frozen batch norm, no row sees another)."""
    if pixels.ndim != 4 or g256.ndim != 2 or len(pixels) != len(g256):
        raise ValueError(f"describe_batch: expected pixels (B, 3, S, S) and g256 (B, G), got "
                         f"{tuple(pixels.shape)} and {tuple(g256.shape)}")
    step = len(pixels) or 1
    if pixels.device.type == "cpu":
        per_image = pixels.shape[2] * pixels.shape[3]
        step = max(1, CPU_PIXELS_PER_THREAD * torch.get_num_threads() // per_image)
    with autocast(pixels.device):
        out = [model(pixels[i:i + step], g256[i:i + step]).float() for i in range(0, len(pixels), step)]
    return torch.cat(out) if out else torch.zeros(0, 0)  # (B, E)


@dataclass(frozen=True)
class Embeddings:
    ids: list[str]  # file stems of the images that loaded, in input order
    vectors: np.ndarray  # (N, E) float32
    skipped: list[str]  # paths that could not be read


class GistCollate:
    """Batch collation that also computes the batch's gist256 (B, G), so that a loader worker does every step
    but the model: decoding, resizing and GIST overlap with the model's forward in the main process."""

    def __init__(self, gist256: Gist256):
        self.gist256 = gist256

    def __call__(self, items):
        indices, data, bad = collate_skipping(items)
        if data is not None:
            pixels, gist_pixels = data
            with torch.no_grad():
                data = (pixels, self.gist256(gist_pixels))  # (B, 3, S, S), (B, G) float32
        return indices, data, bad


@torch.no_grad()
def embed_paths(model: torch.nn.Module, gist256: Gist256, paths: Sequence[Path], image_size: int,
                batch_size: int = 64, workers: int = 2, device: torch.device | str = "cpu",
                desc: str = "embedding") -> Embeddings:
    """Descriptors (N, E) of `paths` with `model(pixels, g256)`; unreadable files are skipped and reported.

    On the CPU with workers > 0 the workers compute gist256 too (`GistCollate`), so that the main process
    runs only the model; on a GPU gist256 runs there and batches come in pinned memory.
    """
    device = torch.device(device)
    dataset = ImageDataset(paths, functools.partial(image_pair, size=image_size))
    in_workers = device.type == "cpu" and workers > 0
    gist256.to("cpu" if in_workers else device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=GistCollate(gist256) if in_workers else collate_skipping,
                                         persistent_workers=False, pin_memory=device.type == "cuda")
    model.eval().to(device)
    kept, chunks, skipped = [], [], []
    for indices, data, bad in tqdm(loader, desc=desc, unit="batch", leave=False):
        skipped.extend(bad)
        if data is None:
            continue
        pixels, gist = (t.to(device, non_blocking=True) for t in data)
        g256 = gist if in_workers else gist256(gist)  # (B, G)
        chunks.append(describe_batch(model, pixels, g256).cpu().numpy())  # (B, E)
        kept.extend(indices.tolist())
    skips = SkipLog()
    dataset.record_skips(skipped, skips)
    skips.report(log, f"images ({desc})")
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return Embeddings([Path(paths[i]).stem for i in kept], vectors.astype(np.float32),
                      [str(paths[i]) for i in skipped])
