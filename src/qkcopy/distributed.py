"""The process group for torchrun jobs, and the helpers that split work over ranks and merge it back.

Letters: W world size, n items of a bulk pass, m_r this rank's part of them.

Launch with `torchrun`: `init()` reads RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT through the env://
rendezvous) and joins the group, NCCL on GPU, gloo on CPU. In a plain process it returns rank 0 of a world of
1 with no process group, and every helper here runs the same code with its collectives skipped. The sharded
QK step itself is `qkcopy.qk.step.colearn_loss`.

A manual all-reduce after backward is used rather than DistributedDataParallel: the frozen side's head runs
on two code paths per step (over the bank without grad, on the selected rows with grad) and may own none of
the selected rows on a rank, which DDP handles only with find_unused_parameters; one flat all-reduce of the
trainable gradients is the simplest exact form.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist
from torch.distributed._functional_collectives import all_gather_single

from qkcopy.device import resolve_device


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. Tensors passed to the helpers must live on `device`."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def close(self) -> None:
        if tdist.is_initialized():
            tdist.destroy_process_group()

    def all_gather_cat(self, t: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
        """t (n_r, …) from every rank concatenated in rank order → (Σ n_r, …); n_r may differ between ranks.

        differentiable: gradients of the result flow back to each rank's own `t` (summed over ranks).
        """
        if self.world == 1:
            return t
        t = t.to(self.device)
        size = torch.tensor([t.shape[0]], device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        tdist.all_gather(sizes, size)
        sizes = [int(s) for s in sizes]
        pad = max(sizes) - t.shape[0]
        padded = torch.cat([t, t.new_zeros(pad, *t.shape[1:])]) if pad else t.contiguous()  # equal shapes
        if differentiable:  # backward: reduce-scatter (sum); torch.distributed.nn.functional.all_gather's successor
            parts = all_gather_single(padded, 0, tdist.group.WORLD).chunk(self.world)
        else:
            parts = [torch.empty_like(padded) for _ in sizes]
            tdist.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    def all_reduce_mean_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average .grad over ranks, one flat all-reduce per dtype; a missing grad counts as zeros.

        Call after backward, before the optimizer step, with the same parameter list (same order) everywhere.
        """
        if self.world == 1:
            return
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for p in params:
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                by_dtype.setdefault(p.grad.dtype, []).append(p)
        for dtype in sorted(by_dtype, key=str):
            group = by_dtype[dtype]
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            tdist.all_reduce(flat)
            flat /= self.world
            offset = 0
            for p in group:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()


class MainRankOnly(logging.Filter):
    """Passes every record on rank 0; on other ranks only warnings and errors."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


def init(device: str = "auto", timeout_minutes: float = 120) -> Dist:
    """Join the torchrun job (NCCL on GPU, gloo on CPU), or return the single-process Dist when not launched so.

    device: "auto" (cuda when available), "cpu" or "cuda". timeout_minutes: how long a collective may wait,
    e.g. other ranks at a barrier while rank 0 evaluates. Installs `MainRankOnly` on the root log handlers.
    """
    use_cuda = resolve_device(device).type == "cuda"
    if "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world,
                                 timeout=datetime.timedelta(minutes=timeout_minutes),
                                 device_id=dev if use_cuda else None)
    for handler in logging.getLogger().handlers:
        handler.addFilter(MainRankOnly(rank))
    log.info("rank %d of %d on %s (%s)", rank, world, dev, tdist.get_backend())
    return Dist(rank, world, local_rank, dev)


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [start, stop) of rank's contiguous shard of n: sizes differ by at most one and tile 0 … n−1."""
    if n < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"need n ≥ 0, world ≥ 1 and 0 ≤ rank < world, got n={n}, rank={rank}, world={world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def gather_rows(index: torch.Tensor, rows: torch.Tensor, n: int, dist: Dist) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge per-rank results of a bulk pass: (ids (m,) ascending, rows (m, …)) on every rank, on the CPU.

    index (m_r,) int64: which of the n items this rank's `rows` (m_r, …) are. Ids no rank produced (skipped
    images) are absent from the result; an id produced twice or outside 0 … n−1 is an error.
    """
    if index.ndim != 1 or rows.shape[:1] != index.shape:
        raise ValueError(f"expected index (m,) and rows (m, …), got {tuple(index.shape)} and {tuple(rows.shape)}")
    ids = dist.all_gather_cat(index.long()).cpu()  # (m,)
    merged = dist.all_gather_cat(rows).cpu()  # (m, …)
    if ids.numel() and (ids.min() < 0 or ids.max() >= n):
        raise ValueError(f"gather_rows: ids must lie in 0 … {n - 1}, got {ids.min().item()} … {ids.max().item()}")
    order = torch.argsort(ids, stable=True)
    ids, merged = ids[order], merged[order]
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if repeated.numel():
        raise ValueError(f"gather_rows: {repeated.numel()} ids produced twice (first: {repeated[:5].tolist()}); "
                         "each item must belong to exactly one rank")
    return ids, merged


class ShardedBatches(torch.utils.data.Sampler):
    """Each global batch of a batch sampler cut to this rank's contiguous part (global batch B ≥ W)."""

    def __init__(self, batches: Sequence[list], dist: Dist):
        self.batches, self.dist = batches, dist

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list]:
        for batch in self.batches:
            start, stop = shard_range(len(batch), self.dist.rank, self.dist.world)
            yield batch[start:stop]


