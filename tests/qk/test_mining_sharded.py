"""The bounded miner under 2 gloo ranks: the same negatives, loss and gradients as the full pass and as one
process, step after step with Adam updates, with the frozen head trained (partial freeze) and fixed (full)."""

import logging
import os

import pytest
import torch.multiprocessing as mp
from test_mining import B, D, N, make_problem, run_steps
from testkit import free_port

from qkcopy.distributed import init, shard_range
from qkcopy.qk.bank import BankShard


def _worker(rank: int, world: int, port: int, full_freeze: bool) -> None:
    import torch

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist = init("cpu")
    encoder, head, bank = make_problem(seed=7)
    start, stop = shard_range(N, rank, world)
    lo, hi = shard_range(B, rank, world)
    miner = run_steps(encoder, head, bank, lambda b: BankShard(b[start:stop], start, D, 48), 8, full_freeze,
                      seed=7, dist=dist, batch_part=slice(lo, hi))
    bounded = [h for h in miner.history if not h.full]
    assert bounded and all(h.rows == N and h.evaluated < N for h in bounded)
    dist.barrier()
    dist.close()
    logging.shutdown()
    os._exit(0)  # as in test_step_sharded: skip gloo's teardown at interpreter exit


@pytest.mark.parametrize("full_freeze", [False, True])
def test_sharded_bounded_miner_equals_full_pass(full_freeze):
    mp.spawn(_worker, args=(2, free_port(), full_freeze), nprocs=2, join=True)
