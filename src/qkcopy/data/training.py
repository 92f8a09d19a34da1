"""Training data: original images, synthetic queries, the sampler that fixes their order, gist256.

Letters: B batch, S model input size, G gist256 dim (256).

Every item is `(index, pixels (3, S, S) float32 in [0, 1], gist_pixels (3, 32, 32) float32 0..255)`. A query
is a random AugLy composition of training image `index` whose seed is a pure function of (run seed, phase,
epoch, index), so the same run sees the same queries in the same order on any machine, and `--resume`
continues the exact stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from qkcopy.data.augment import make_query
from qkcopy.data.images import load_image
from qkcopy.data.transforms import image_pair
from qkcopy.seeds import derive_seed

log = logging.getLogger(__name__)


# First part of every derived seed, so that streams for different purposes never coincide.
QUERY_STREAM, ORDER_STREAM, BANK_STREAM = 1, 2, 3

class TrainImages(torch.utils.data.Dataset):
    """Keyed by (index, seed): seed None → the original image; an int → the query made with that seed.

    With `pairs=True` an item carries both the query and its original: (index, query pixels, query gist
    pixels, original pixels, original gist pixels), for the SimCLR- and MoCo-style comparisons.
    """

    def __init__(self, paths: Sequence[Path], image_size: int, strength: str, pairs: bool = False,
                 exclude: frozenset[str] = frozenset(), broad: bool = False, weights: dict[str, float] | None = None):
        self.paths, self.image_size, self.strength, self.pairs = list(paths), image_size, strength, pairs
        self.exclude, self.broad = exclude, broad  # ops of held-out edit families; extra (non-AugLy) ops too
        self.weights = dict(weights or {})  # data.op_weights

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple:
        index, seed = key
        original = load_image(self.paths[index])
        if seed is None:
            return (index, *image_pair(original, self.image_size))
        background = load_image(self.paths[(index + 1 + seed % (len(self.paths) - 1)) % len(self.paths)])
        query, _ = make_query(original, seed, self.strength, background=background, exclude=self.exclude,
                              broad=self.broad, weights=self.weights)
        pair = image_pair(query, self.image_size)
        if self.pairs:
            pair = (*pair, *image_pair(original, self.image_size))
        return (index, *pair)


def query_seed(run_seed: int, phase: int, epoch: int, index: int) -> int:
    return derive_seed(QUERY_STREAM, run_seed, phase, epoch, index)


class PhaseBatches(torch.utils.data.Sampler):
    """Batches of (index, query seed or None) for steps start … total−1 of one phase.

    Epoch e of phase p visits the images in a permutation drawn from (run seed, p, e); a phase longer than
    one epoch continues into the next permutation. Batch b is a pure function of (seed, phase, b).
    """

    def __init__(self, n: int, batch_size: int, total: int, run_seed: int, phase: int, queries: bool,
                 start: int = 0):
        if n < batch_size:
            raise ValueError(f"{n} training images is fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.total, self.start = n, batch_size, total, start
        self.run_seed, self.phase, self.queries = run_seed, phase, queries

    def __len__(self) -> int:
        return self.total - self.start

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(derive_seed(ORDER_STREAM, self.run_seed, self.phase, epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int | None]]]:
        per_epoch = self.n // self.batch_size  # drop the last partial batch of each epoch
        for step in range(self.start, self.total):
            epoch, within = divmod(step, per_epoch)
            order = self._permutation(epoch)[within * self.batch_size:(within + 1) * self.batch_size]
            yield [(i, query_seed(self.run_seed, self.phase, epoch, i) if self.queries else None) for i in order]
