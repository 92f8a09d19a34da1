"""Data-parallel QK training with torch.distributed: the process group, the sharded step, sharded bulk passes.

Letters: W world size, b this rank's batch, B = Σ b the global batch, N bank rows, C rows in one chunk,
F = D + G bank row width, E descriptor dim, H head hidden width, M hard negatives per positive, K = B·M,
S selected bank rows (positives and hard negatives), S_r the part of them in this rank's shard.

Launch with `torchrun`: `init()` reads RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT through the env://
rendezvous) and joins the group, NCCL on GPU, gloo on CPU. In a plain process it returns rank 0 of a world of
1 with no process group, and every helper here runs the same code with its collectives skipped.

The sharded step (`sharded_colearn_loss`) gives the single-process `colearn_loss` of the global batch:
1. the batch's descriptors and positive rows are all-gathered (the descriptors differentiably);
2. each rank passes the head over its own shard of the bank (no grad) and keeps a running top-K of its
   distances to the whole global batch, positives excluded;
3. the W candidate lists (distance, batch index, row) are all-gathered and every rank picks the same global
   K hardest pairs, ties broken by (distance, batch index, row);
4. each rank re-runs the head WITH grad on the selected rows it owns; those keys are all-gathered
   differentiably, so every rank holds all B queries and all S keys, each with a path back to its owner;
5. every rank computes the same global loss (`pair_loss`, as one process does). The backward of an all-gather
   sums the W identical gradients onto the owning rank, so each rank's parameters receive W × their share;
   `Dist.all_reduce_mean_grads` averages over ranks, which leaves exactly the single-process gradient.
A manual all-reduce after backward is used rather than DistributedDataParallel: the frozen side's head runs
on two code paths per step (over the bank without grad, on the selected rows with grad) and may own none of
the selected rows on a rank, which DDP handles only with find_unused_parameters; one flat all-reduce of the
trainable gradients is the simplest exact form.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist
from torch.distributed._functional_collectives import all_gather_single

from qkcopy.bank import shard_chunks  # noqa: F401  (part of this module's API: a rank's bank chunks)
from qkcopy.colearn import HeadFn, StepResult, mine_hard_negatives, pair_loss
from qkcopy.loss import LossConfig, smallest_pairs

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
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
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


def sharded_indices(n: int, dist: Dist) -> torch.Tensor:
    """This rank's item indices (n_r,) int64 for a bulk pass over n items (bank building, embedding)."""
    return torch.arange(*shard_range(n, dist.rank, dist.world))


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


def sharded_colearn_loss(queries_local: torch.Tensor, positive_rows_local: torch.Tensor, head: HeadFn,
                         bank_shard_chunks: Iterable[tuple[int, torch.Tensor]],
                         take_local: Callable[[torch.Tensor], torch.Tensor], shard: tuple[int, int],
                         feature_dim: int, cfg: LossConfig, dist: Dist,
                         mining_head: HeadFn | None = None) -> StepResult:
    """The QK Co-learn loss of the global batch with the bank split over ranks (see the module docstring).

    queries_local (b, E) with grad; positive_rows_local (b,) int64 global bank rows; bank_shard_chunks:
    (global row offset, rows (C, F) float32) over this rank's shard (start, stop); take_local(rows (S_r,))
    → (S_r, F) float32 for global rows inside the shard. Shards must tile the bank in rank order. Returns
    the global loss, identical on every rank; call `dist.all_reduce_mean_grads` after backward.
    mining_head: the head for the no-grad pass only, e.g. a bf16 copy of `head` with bf16 chunks: an
    approximate choice of negatives, about 1.9× faster on CPUs with avx512_bf16; the loss and its gradients
    always use `head` in float32 on the chosen rows. Default: `head` (exact).
    """
    if queries_local.ndim != 2 or positive_rows_local.shape != queries_local.shape[:1]:
        raise ValueError(f"expected queries_local (b, E) and positive_rows_local (b,), got "
                         f"{tuple(queries_local.shape)} and {tuple(positive_rows_local.shape)}")
    start, stop = shard
    bounds = dist.all_gather_cat(torch.tensor([[start, stop]], device=dist.device)).cpu()  # (W, 2)
    if bounds[0, 0] != 0 or not torch.equal(bounds[1:, 0], bounds[:-1, 1]):
        raise ValueError(f"bank shards must tile the bank in rank order from row 0, got {bounds.tolist()}")
    queries = dist.all_gather_cat(queries_local.float(), differentiable=True)  # (B, E) float32
    positive_rows = dist.all_gather_cat(positive_rows_local.long().to(queries.device))  # (B,)
    k = queries.shape[0] * cfg.negatives_per_positive
    miner = mine_hard_negatives(queries, head if mining_head is None else mining_head, bank_shard_chunks,
                                feature_dim, positive_rows, k)
    found = torch.stack([miner.values.double(), miner.batch_index.double(), miner.rows.double()], 1)  # (≤K, 3)
    found = dist.all_gather_cat(found)  # (≤W·K, 3) float64: exact for float32 values and ids below 2**53
    _, neg_batch, neg_rows = smallest_pairs(found[:, 0], found[:, 1].long(), found[:, 2].long(), k)  # (K,) each
    selected, inverse = torch.unique(torch.cat([positive_rows, neg_rows]), return_inverse=True)  # (S,), (B+K,)
    own = selected[(selected >= start) & (selected < stop)]  # (S_r,) ascending
    rows = take_local(own)  # (S_r, F) float32
    keys = dist.all_gather_cat(head(rows[:, :feature_dim], rows[:, feature_dim:]).float(),
                               differentiable=True)  # (S, E): rank order = ascending rows = `selected` order
    if keys.shape[0] != selected.numel():
        raise ValueError(f"{selected.numel()} selected bank rows but the shards hold {keys.shape[0]} of them: "
                         f"a positive row lies outside the bank (shards {bounds.tolist()})")
    batch = queries.shape[0]
    return pair_loss(queries, keys[inverse[:batch]], neg_batch, keys[inverse[batch:]], cfg)


def choose_chunk_rows(free_bytes: int, batch: int, width: int, hidden: int, descriptor_dim: int,
                      fraction: float = 0.5, multiple: int = 1024, most: int = 1 << 20) -> int:
    """Bank rows per chunk whose transient memory in one bank-pass step fits in fraction · free_bytes.

    Per row: the fp16 row copied to the device (2F) and cast (4F), the head's concat (4F), hidden (4H) and
    output (4E) activations, and the (B, C) distances with the miner's masked copy (8B).
    """
    per_row = 2 * width + 8 * width + 4 * hidden + 4 * descriptor_dim + 8 * batch
    rows = int(free_bytes * fraction) // per_row // multiple * multiple
    return max(multiple, min(rows, most))


# On the CPU a chunk this size runs as fast as 65 536 rows (the pass is GEMM-bound) with 1/8 of the transient memory.
CPU_CHUNK_ROWS = 8192


def auto_chunk_rows(device: torch.device, batch: int, width: int, hidden: int, descriptor_dim: int) -> int:
    """Chunk rows for the bank pass from free memory: torch.cuda.mem_get_info on GPU, else ≤ CPU_CHUNK_ROWS."""
    if device.type == "cuda":
        return choose_chunk_rows(torch.cuda.mem_get_info(device)[0], batch, width, hidden, descriptor_dim)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min(CPU_CHUNK_ROWS, choose_chunk_rows(available, batch, width, hidden, descriptor_dim))
