"""One QK Co-learn step: the trained side's batch against every row of the frozen side's bank, on one rank or many.

Letters: W world size, b this rank's batch, B = Σ b the global batch, N bank rows, C rows in one chunk,
F = D + G bank row width, E descriptor dim, M hard negatives per positive, K = B·M, S selected bank rows
(positives and hard negatives), S_r the part of them in this rank's bank shard.

`colearn_loss` is the only implementation of the paper's step; training, `qkcopy bench` and the tests call it.
With one process (`Dist()`, world 1) every collective below is the identity. With W ranks (torchrun):
1. the batch's descriptors and positive rows are all-gathered (the descriptors differentiably);
2. each rank passes the frozen side's head over its own bank shard (no grad), chunk by chunk, keeping a
   running top-K of its distances to the whole global batch, positives excluded — or, given a
   `qk.mining.BoundedMiner`, only over the rows that its bounds cannot rule out (the same top-K, exactly);
3. the W candidate lists (distance, rounding bound, batch index, row) are all-gathered and every rank picks
   the same global K hardest pairs (`qk.certify.choose_pairs`: the K smallest in (reference distance, batch
   index, row) order, the same set on any kernel, chunking or number of ranks);
4. each rank re-runs the head WITH grad on the selected rows it owns; those keys are all-gathered
   differentiably, so every rank holds all B queries and all S keys, each with a path back to its owner;
5. every rank computes the same global loss (`pair_loss`). The backward of an all-gather sums the W identical
   gradients onto the owning rank; `Dist.all_reduce_mean_grads` after backward leaves exactly the
   single-process gradient.
The loss depends on the bank only through the S selected rows, so the gradients equal full autograd over the
whole bank while memory never holds N × hidden activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch

from qkcopy.distributed import Dist
from qkcopy.qk.bank import BankShard
from qkcopy.qk.certify import HeadBound, certifiable, choose_pairs, reference_distances
from qkcopy.qk.loss import HardNegativeMiner, LossConfig, LossParts, qk_loss, squared_distances
from qkcopy.qk.mining import BoundedMiner

# (features (C, D), gist256 (C, G)) -> descriptors (C, E): the frozen side's head.
HeadFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StepResult:
    loss: LossParts
    d2_pos: torch.Tensor  # (B,) float32, detached
    d2_neg: torch.Tensor  # (B·M,) float32, detached, in the order of `negatives`
    negatives: torch.Tensor | None = None  # (B·M, 2) int64 (batch index, bank row) of the chosen pairs, sorted


def mine_hard_negatives(queries: torch.Tensor, head: HeadFn, chunks: Iterable[tuple[int, torch.Tensor]],
                        feature_dim: int, positive_rows: torch.Tensor, n_negatives: int) -> HardNegativeMiner:
    """Pass the bank once: head over every chunk (no grad), distances to the batch, running candidates.

    For the paper's float32 `Head` each distance carries its rounding bound (`qk.certify`), so the choice made
    from the candidates is the same on any kernel; for other heads (bf16 copies, the competition variant) the
    computed distances are taken as they are.
    """
    if queries.ndim != 2:
        raise ValueError(f"expected queries (B, E), got {tuple(queries.shape)}")
    miner = HardNegativeMiner(n_negatives, positive_rows)
    q = queries.detach().float()  # (B, E) float32
    bound = HeadBound(head, q.device) if certifiable(head) else None
    q64 = q.double()  # (B, E): the certified pass's arithmetic (`qk.certify`)
    q_norm = q64.norm(dim=1)  # (B,)
    with torch.no_grad():
        for offset, rows in chunks:  # rows (C, F)
            feat, g = rows[:, :feature_dim], rows[:, feature_dim:]
            if bound is None:
                miner.update(squared_distances(q, head(feat, g)), offset)  # (B, C) float32
                continue
            keys, key_error, _, _ = bound.keys(feat, g)  # (C, E), (C,) float64
            d2 = squared_distances(q64, keys, torch.float64)  # (B, C)
            miner.update(d2, offset, bound.pair_error(q_norm, keys, key_error, d2))
    return miner


def pair_loss(queries: torch.Tensor, positive_keys: torch.Tensor, negative_batch_index: torch.Tensor,
              negative_keys: torch.Tensor, cfg: LossConfig) -> StepResult:
    """Loss from descriptors with grad: queries (B, E), their keys (B, E), and B·M (query index, key) pairs."""
    d2_pos = (queries.float() - positive_keys.float()).pow(2).sum(1)  # (B,) float32
    d2_neg = (queries.float()[negative_batch_index] - negative_keys.float()).pow(2).sum(1)  # (B·M,) float32
    return StepResult(qk_loss(d2_pos, d2_neg, cfg), d2_pos.detach(), d2_neg.detach())


def colearn_loss(queries: torch.Tensor, positive_rows: torch.Tensor, head: HeadFn, bank: BankShard,
                 cfg: LossConfig, dist: Dist | None = None, mining_head: HeadFn | None = None,
                 miner: BoundedMiner | None = None) -> StepResult:
    """The QK Co-learn loss of the global batch against every bank row (see the module docstring).

    queries (b, E): this rank's trained-side descriptors, with grad. positive_rows (b,) int64: the global bank
    row of each one's positive. head: the frozen side's head (its parameters may require grad: trained too).
    bank: this rank's shard (`Bank.shard`); the shards of all ranks must tile the bank in rank order.
    mining_head: a head for the no-grad pass only (e.g. a bf16 copy, with `bank.mining_dtype` bf16): an
    approximate choice of negatives; the loss and its gradients always use `head` in float32. Default: exact.
    miner: a `qk.mining.BoundedMiner` of this shard (one per phase, kept across steps): the same negatives as
    the full pass, evaluating the head on the rows that its bounds cannot rule out (`head` must be a `Head`).
    Returns the global loss, identical on every rank; call `dist.all_reduce_mean_grads` after backward.
    """
    dist = dist or Dist(device=bank.device)
    if queries.ndim != 2 or positive_rows.shape != queries.shape[:1]:
        raise ValueError(f"expected queries (b, E) and positive_rows (b,), got {tuple(queries.shape)} and "
                         f"{tuple(positive_rows.shape)}")
    bounds = dist.all_gather_cat(torch.tensor([[bank.start, bank.stop]], device=dist.device)).cpu()  # (W, 2)
    if bounds[0, 0] != 0 or not torch.equal(bounds[1:, 0], bounds[:-1, 1]):
        raise ValueError(f"bank shards must tile the bank in rank order from row 0, got {bounds.tolist()}")
    queries = dist.all_gather_cat(queries.float(), differentiable=True)  # (B, E) float32
    positive_rows = dist.all_gather_cat(positive_rows.long().to(queries.device))  # (B,)
    k = queries.shape[0] * cfg.negatives_per_positive
    if miner is not None and mining_head is not None:
        raise ValueError("pass either a mining_head (approximate) or a bounded miner (exact), not both")
    if miner is not None and miner.shard is not bank:
        raise ValueError("the bounded miner was built for another bank shard; keep one per phase")
    if miner is not None:
        found_by = miner.mine(queries, head, positive_rows, k, dist)
    else:
        found_by = mine_hard_negatives(queries, head if mining_head is None else mining_head, bank.chunks(),
                                       bank.feature_dim, positive_rows, k)
    found = torch.stack([found_by.values.double(), found_by.errors.double(), found_by.batch_index.double(),
                         found_by.rows.double()], 1)
    found = dist.all_gather_cat(found)  # (P, 4) float64: exact for float32 values and ids below 2**53
    certified = mining_head is None and certifiable(head)
    reference = _reference(queries, head, bank, dist) if certified else None
    neg_batch, neg_rows, _ = choose_pairs(found[:, 0], found[:, 1], found[:, 2].long(), found[:, 3].long(), k,
                                          reference)  # (K,) each, in (batch index, row) order
    selected, inverse = torch.unique(torch.cat([positive_rows, neg_rows]), return_inverse=True)  # (S,), (B+K,)
    own = selected[(selected >= bank.start) & (selected < bank.stop)]  # (S_r,) ascending
    feat, g256 = bank.split(bank.take(own))  # (S_r, D), (S_r, G) float32
    keys = dist.all_gather_cat(head(feat, g256).float(), differentiable=True)  # (S, E) in `selected` order
    if keys.shape[0] != selected.numel():
        raise ValueError(f"{selected.numel()} selected bank rows but the shards hold {keys.shape[0]} of them: "
                         f"a positive row lies outside the bank (shards {bounds.tolist()})")
    batch = queries.shape[0]
    result = pair_loss(queries, keys[inverse[:batch]], neg_batch, keys[inverse[batch:]], cfg)
    return replace(result, negatives=torch.stack([neg_batch, neg_rows], 1))


def _reference(queries: torch.Tensor, head: HeadFn, bank: BankShard, dist: Dist):
    """Reference distances (`qk.certify.reference_distances`) of global pairs, each computed by its row's owner."""
    def reference(batch_index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        own = (rows >= bank.start) & (rows < bank.stop)  # (U,)
        c = torch.zeros(rows.numel(), dtype=torch.float64, device=queries.device)
        if own.any():
            feat, g = bank.split(bank.take(rows[own]))
            c[own] = reference_distances(head, feat, g, queries.detach()[batch_index[own]].float())
        return dist.all_gather_cat(c[None]).sum(0)  # (U,): one owner per pair, zeros elsewhere
    return reference
