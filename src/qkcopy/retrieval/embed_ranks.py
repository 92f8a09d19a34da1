"""`torchrun … -m qkcopy embed`: the resumable shards of `embed_shards.embed_folder` dealt out to ranks.

Letters: W world size, S shards of `shard_size` images (in path order).

Rank r embeds the shards s ≡ r (mod W) that are not already complete on disk and writes each to
PREFIX.shards/ exactly as one process would (same images, same batches, same key). After a barrier rank 0 runs
`embed_folder`, which finds every shard complete and merges them in order: the outputs are the bytes one
process writes, and an interrupted job resumes shard by shard under any W. The images and the output folder
must be on a file system every rank sees.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from qkcopy.distributed import Dist
from qkcopy.retrieval.embed_shards import (EmbeddedFolder, _read_shard, embed_folder, embed_shard, plan_shards,
                                           shard_key)

log = logging.getLogger(__name__)


def embed_folder_ranks(trained, paths: Sequence[Path], side: str, out: str | Path, dist: Dist,
                           batch_size: int = 64, workers: int = 2, shard_size: int = 10_000,
                           keep_shards: bool = False) -> EmbeddedFolder | None:
    """`embed_folder` with the shards split over the ranks of `dist`; the EmbeddedFolder on rank 0, None on
    the others (every rank returns after rank 0 has written the outputs)."""
    if dist.world == 1:
        return embed_folder(trained, paths, side, out, batch_size, workers, shard_size, keep_shards)
    paths, shard_dir, n_shards = plan_shards(paths, side, out, shard_size)
    new_dir = not shard_dir.exists()
    dist.barrier()  # every rank has looked before any creates it
    shard_dir.mkdir(parents=True, exist_ok=True)
    for s in range(dist.rank, n_shards, dist.world):
        part = paths[s * shard_size:(s + 1) * shard_size]
        key = shard_key(part, trained.fingerprint, side, trained.cfg.model.input_size)
        if _read_shard(shard_dir / f"{s:05d}.h5", key) is None:
            log.info("rank %d: embedding shard %d/%d (%d images, %s side)", dist.rank, s + 1, n_shards,
                        len(part), side)
            embed_shard(trained, side, part, shard_dir / f"{s:05d}.h5", key, batch_size, workers)
    dist.barrier()
    result = None
    if dist.is_main:
        try:
            result = embed_folder(trained, paths, side, out, batch_size, workers, shard_size, keep_shards)
        finally:
            if new_dir and not keep_shards and result is None and shard_dir.exists():
                shutil.rmtree(shard_dir)  # nothing readable: shards of nothing are no use to a rerun
    dist.barrier()
    return result
