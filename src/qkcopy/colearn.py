"""One QK Co-learn step: the trained side's batch against every row of the frozen side's bank.

Letters: B batch, N bank rows, C rows in one chunk, S selected rows, D backbone dim, G gist dim, E descriptor
dim, M hard negatives per positive.

The frozen side's head is evaluated exactly over all N bank rows every step, without grad and chunk by chunk,
keeping only a running top-(B·M) of the smallest non-matching distances. The head is then re-run WITH grad on
just the S ≤ B + B·M selected rows (positives and hard negatives). The loss depends on the bank only through
those rows, so the gradients equal full autograd over the whole bank while memory never holds N × hidden
activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from qkcopy.loss import HardNegativeMiner, LossConfig, LossParts, qk_loss, squared_distances

# (features (C, D), gist256 (C, G)) -> descriptors (C, E): the frozen side's head.
HeadFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StepResult:
    loss: LossParts
    d2_pos: torch.Tensor  # (B,) float32, detached
    d2_neg: torch.Tensor  # (B·M,) float32, detached, ascending


def mine_hard_negatives(queries: torch.Tensor, head: HeadFn, chunks: Iterable[tuple[int, torch.Tensor]],
                        feature_dim: int, positive_rows: torch.Tensor, n_negatives: int) -> HardNegativeMiner:
    """Pass the bank once: head over every chunk (no grad), distances to the batch, running top-k."""
    if queries.ndim != 2:
        raise ValueError(f"expected queries (B, E), got {tuple(queries.shape)}")
    miner = HardNegativeMiner(n_negatives, positive_rows)
    q = queries.detach().float()  # (B, E) float32
    with torch.no_grad():
        for offset, rows in chunks:  # rows (C, D+G) float32
            keys = head(rows[:, :feature_dim], rows[:, feature_dim:])  # (C, E)
            miner.update(squared_distances(q, keys), offset)  # (B, C) float32
    return miner


def pair_loss(queries: torch.Tensor, positive_keys: torch.Tensor, negative_batch_index: torch.Tensor,
              negative_keys: torch.Tensor, cfg: LossConfig) -> StepResult:
    """Loss from descriptors with grad: queries (B, E), their keys (B, E), and B·M (query index, key) pairs."""
    d2_pos = (queries.float() - positive_keys.float()).pow(2).sum(1)  # (B,) float32
    d2_neg = (queries.float()[negative_batch_index] - negative_keys.float()).pow(2).sum(1)  # (B·M,) float32
    return StepResult(qk_loss(d2_pos, d2_neg, cfg), d2_pos.detach(), d2_neg.detach())


def colearn_loss(queries: torch.Tensor, positive_rows: torch.Tensor, head: HeadFn,
                 chunks: Iterable[tuple[int, torch.Tensor]], take: Callable[[torch.Tensor], torch.Tensor],
                 feature_dim: int, cfg: LossConfig) -> StepResult:
    """The QK Co-learn loss of a batch.

    queries: (B, E) trained-side descriptors, with grad. positive_rows: (B,) int64 bank row of each one's
    positive. head: the frozen side's head (its parameters may require grad: they are trained too).
    chunks: iterable of (row_offset, rows (C, D+G) float32) covering the bank; take(index (S,)) → (S, D+G) rows.
    """
    batch = queries.shape[0]
    if positive_rows.shape != (batch,):
        raise ValueError(f"expected positive_rows ({batch},), got {tuple(positive_rows.shape)}")
    miner = mine_hard_negatives(queries, head, chunks, feature_dim, positive_rows,
                                batch * cfg.negatives_per_positive)
    _, neg_batch, neg_rows = miner.result()  # (B·M,) each
    selected, inverse = torch.unique(torch.cat([positive_rows, neg_rows]), return_inverse=True)  # (S,), (B+B·M,)
    rows = take(selected)  # (S, D+G) float32
    keys = head(rows[:, :feature_dim], rows[:, feature_dim:])  # (S, E) with grad into the head
    return pair_loss(queries, keys[inverse[:batch]], neg_batch, keys[inverse[batch:]], cfg)


def in_batch_loss(queries: torch.Tensor, keys: torch.Tensor, cfg: LossConfig) -> StepResult:
    """SimCLR/MoCo-style: same loss and mining, negatives only among `keys` (K, E); key b is query b's positive.

    keys may hold more rows than queries (a MoCo queue appended after the batch's own keys).
    """
    batch = queries.shape[0]
    if keys.ndim != 2 or keys.shape[0] < batch:
        raise ValueError(f"expected keys (≥{batch}, E), got {tuple(keys.shape)}")
    positive_rows = torch.arange(batch, device=queries.device)
    miner = HardNegativeMiner(batch * cfg.negatives_per_positive, positive_rows)
    with torch.no_grad():
        miner.update(squared_distances(queries.detach(), keys.detach()), 0)  # (B, K) float32
    _, neg_batch, neg_rows = miner.result()
    return pair_loss(queries, keys[:batch], neg_batch, keys[neg_rows], cfg)
