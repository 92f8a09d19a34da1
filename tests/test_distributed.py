"""The process-group helpers in one process: shards tile, merges sort and refuse duplicates, batches split, logs filtered."""

import logging

import pytest
import torch

from qkcopy.distributed import (
    Dist,
    MainRankOnly,
    ShardedBatches,
    gather_rows,
    shard_range,
)


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_shards_tile_without_loss_or_duplicates(world):
    for n in range(0, 41):
        ranges = [shard_range(n, r, world) for r in range(world)]
        rows = [i for start, stop in ranges for i in range(start, stop)]
        assert rows == list(range(n))
        sizes = [stop - start for start, stop in ranges]
        assert max(sizes) - min(sizes) <= 1
    assert shard_range(37, 1, 2) == (19, 37)
    with pytest.raises(ValueError):
        shard_range(10, world, world)


def test_gather_rows_single_process_sorts_and_refuses_duplicates():
    ids, rows = gather_rows(torch.tensor([3, 0, 2]), torch.tensor([[3.0], [0.0], [2.0]]), 4, Dist())
    assert ids.tolist() == [0, 2, 3] and rows[:, 0].tolist() == [0.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="twice"):
        gather_rows(torch.tensor([1, 1]), torch.zeros(2, 1), 4, Dist())
    with pytest.raises(ValueError, match="0 … 3"):
        gather_rows(torch.tensor([4]), torch.zeros(1, 1), 4, Dist())


def test_sharded_batches_split_each_global_batch():
    batches = [list(range(7)), list(range(7, 14))]
    parts = [list(ShardedBatches(batches, Dist(rank=r, world=2))) for r in range(2)]
    assert parts[0] == [[0, 1, 2, 3], [7, 8, 9, 10]] and parts[1] == [[4, 5, 6], [11, 12, 13]]
    assert len(ShardedBatches(batches, Dist(rank=1, world=2))) == 2


def test_log_filter_silences_info_on_other_ranks():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    warning = logging.LogRecord("x", logging.WARNING, __file__, 1, "careful", None, None)
    assert MainRankOnly(0).filter(record) and not MainRankOnly(1).filter(record)
    assert MainRankOnly(1).filter(warning)
