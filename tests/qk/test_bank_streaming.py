"""write_bank streams rows from every rank into one file: the same bytes as one process, refusals that leave no
file behind (2 gloo processes)."""

import logging
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from testkit import free_port

from qkcopy.distributed import Dist, init
from qkcopy.qk.bank import BankHeader, write_bank

N = 23
HEADER = BankHeader(n_rows=N, feature_dim=4, gist_dim=2, model_hash="m", data_hash="d", side="K")


def _rows(ids):
    return torch.stack([ids.float() + 0.5 * j for j in range(6)], 1)  # (b, 6)


def _batches(rank, world, drop=None, extra=None):
    """Rank r's ids r, r + W, … in batches of 3, last batch first; optionally one id dropped or one added."""
    ids = [i for i in range(rank, N, world) if i != drop] + ([extra] if extra is not None else [])
    ids = torch.tensor(ids)
    batches = [(ids[s:s + 3], _rows(ids[s:s + 3])) for s in range(0, len(ids), 3)]
    return batches[::-1]


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist = init("cpu")
    folder = Path(folder)
    bank = write_bank(folder / "sharded.bank", HEADER, _batches(rank, world), dist)
    torch.testing.assert_close(bank.rows.float(), _rows(torch.arange(N)).half().float(), rtol=0, atol=0)
    if dist.is_main:
        write_bank(folder / "one.bank", HEADER, _batches(0, 1), Dist())
        assert (folder / "one.bank").read_bytes() == (folder / "sharded.bank").read_bytes()
    dist.barrier()
    with pytest.raises(ValueError, match="1 rows never written"):
        write_bank(folder / "missing.bank", HEADER, _batches(rank, world, drop=5), dist)
    with pytest.raises(ValueError, match="written by two ranks"):
        write_bank(folder / "twice.bank", HEADER, _batches(rank, world, extra=0 if rank == 1 else None), dist)
    dist.barrier()
    assert sorted(p.name for p in folder.iterdir()) == ["one.bank", "sharded.bank"]  # no partial files
    dist.close()
    logging.shutdown()
    os._exit(0)  # as in test_step_sharded: skip gloo's teardown at interpreter exit


def test_two_ranks_stream_one_bank_file(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "sharded.bank").is_file()


def test_rows_outside_the_bank_are_refused(tmp_path):
    with pytest.raises(ValueError, match="row ids must lie in"):
        write_bank(tmp_path / "k.bank", HEADER, [(torch.tensor([N]), torch.zeros(1, 6))])
    assert list(tmp_path.iterdir()) == []
