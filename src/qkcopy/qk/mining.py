"""Exact hard-negative mining that evaluates the frozen side's head on few bank rows per step.

Letters: B global batch, N_r rows of this rank's shard, N all rows, C rows in one chunk, F = D + G head input
width, H hidden width, E descriptor dim, K = B·M hard negatives kept, R rows evaluated exactly in one step.

The full pass (`qk.step.mine_hard_negatives`) runs the head k_n = head(x_n) over all N rows every step. Between
steps the head moves little. `BoundedMiner` keeps, from its last full pass at weights θ⁰, every row's
descriptor k⁰_n in fp16 (k̃_n, with r_n = ‖k⁰_n − k̃_n‖ its rounding), the norm of the head's input ‖x_n‖ and
of its hidden activation ‖h⁰_n‖. For the paper's head k = g + s·(W2·ReLU(W1·x + b1) + b2) at the current
weights θ (ReLU is 1-Lipschitz; ‖·‖₂ spectral norms, Δ = θ − θ⁰):

    ‖k_n − k⁰_n‖ ≤ δ_n = s·( ‖W2‖₂ (‖ΔW1‖₂ ‖x_n‖ + ‖Δb1‖) + ‖ΔW2‖₂ ‖h⁰_n‖ + ‖Δb2‖ )

so ‖q_b − k_n‖ ≥ ‖q_b − k̃_n‖ − r_n − δ_n (r_n also holds the bound on k⁰_n's own float32 rounding). One step:
1. squared distances from the batch to every cached descriptor, (B × N_r × E): 0.4 % of the head's FLOPs;
2. the K pairs with the smallest cached distances: their rows (≤ K) are evaluated; the K-th smallest upper
   bound d̂ + ε (`qk.certify`) among the pairs evaluated on all ranks, T, bounds the K-th reference distance;
3. every other row whose lower bound is ≤ T for some query of the batch is evaluated. No row left out can
   hold one of the K hardest pairs, so `qk.certify.choose_pairs` over the evaluated pairs picks the full
   pass's set, the K smallest in (reference distance, batch index, row) order, whatever the kernels.
Slack for float32 rounding: cached distances (GEMM expansion) may be off by 2γ_{E+3}·(‖q‖ + ‖k̃‖)², and
descriptors by 10⁻⁴·‖k̃_n‖ besides their proven bound; both widen the set of rows evaluated, never narrow it.
The set grows as the head moves away from θ⁰; a full pass (renewing the cache) replaces step 3 when the
fraction of rows to evaluate exceeds `max_fraction` or the mean cost per step since the last full pass
(counting that pass as 1): renewing then lowers the mean. With the frozen head fixed (full freeze) δ = 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from qkcopy.distributed import Dist
from qkcopy.model.descriptor import Head
from qkcopy.qk.bank import BankShard
from qkcopy.qk.certify import HeadBound, certifiable, gamma, gemm_unit
from qkcopy.qk.loss import HardNegativeMiner, squared_distances

log = logging.getLogger(__name__)

DESCRIPTOR_SLACK = 1e-4  # relative float32 error allowed on a head output (observed ≈ 1e-7)


@dataclass(frozen=True)
class MiningStep:
    """One step of `BoundedMiner`: rows evaluated exactly over all ranks, of how many; whether a full pass."""

    evaluated: int
    rows: int
    full: bool


def spectral_norm(matrix: torch.Tensor) -> float:
    """An upper bound of ‖A‖₂ (tight to ~10⁻⁴): the largest eigenvalue of the smaller Gram matrix, in float32.

    Float32 rounding is bounded, not ignored: each Gram entry is off by at most γ·‖a_i‖‖a_j‖ (γ = k·2⁻²⁴ for
    k-term sums), so the Gram matrix by at most γ·‖A‖_F² in spectral norm, and eigvalsh is backward stable
    (error ≲ n·2⁻²⁴·‖G‖); both are added, the second with a factor 10 to spare.
    """
    a = matrix.detach().float()
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a  # (n, n), n = min(rows, columns)
    n, k = gram.shape[0], max(a.shape)
    top = float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0))
    frobenius2 = float(a.double().pow(2).sum())
    return (top * (1 + 10 * n * 2.0 ** -24) + k * 2.0 ** -24 * frobenius2) ** 0.5


class BoundedMiner:
    """Exact mining of one rank's bank shard for a paper-variant `Head`, with a cache renewed by full passes.

    Keep one per phase (bank shard and frozen head); every rank of a job calls `mine` at every step.
    """

    def __init__(self, shard: BankShard, max_fraction: float = 0.5):
        if shard.mining_dtype != torch.float32:
            raise ValueError(f"exact mining needs float32 bank chunks, got {shard.mining_dtype}")
        if not 0 < max_fraction <= 1:
            raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction}")
        self.shard, self.max_fraction = shard, max_fraction
        self.weights: list[torch.Tensor] | None = None  # θ⁰: W1, b1, W2, b2 at the last full pass
        self.cache = None  # (N_r, E) fp16 descriptors k̃ at θ⁰
        self.cache_norm = self.input_norm = self.hidden_norm = self.rounding = None  # (N_r,) float32 each
        self.cycle_cost, self.cycle_steps = 0.0, 0
        self.history: list[MiningStep] = []

    @staticmethod
    def _check_head(head: nn.Module) -> None:
        if not certifiable(head):
            raise ValueError("bounded mining supports the paper-variant float32 Head only (model.variant=paper); "
                             "use the full pass (mining=full) for other heads")

    def mine(self, queries: torch.Tensor, head: Head, positive_rows: torch.Tensor, k: int,
             dist: Dist) -> HardNegativeMiner:
        """The K hardest (query, row) pairs of this shard, exactly those of `mine_hard_negatives`."""
        self._check_head(head)
        if queries.ndim != 2 or positive_rows.shape != queries.shape[:1]:
            raise ValueError(f"expected queries (B, E) and positive_rows (B,), got {tuple(queries.shape)} and "
                             f"{tuple(positive_rows.shape)}")
        q = queries.detach().float()  # (B, E)
        n_total = int(dist.all_gather_cat(torch.tensor([self.shard.rows.shape[0]], device=dist.device)).sum())
        with torch.no_grad():
            if self.weights is None:
                return self._full_pass(q, head, positive_rows, k, n_total)
            miner = HardNegativeMiner(k, positive_rows)
            bound = HeadBound(head, q.device)
            first, row_min, slack = self._cached_pass(q, positive_rows, k)  # (≤K,), (N_r,), ()
            self._evaluate(miner, q, bound, first)
            found = dist.all_gather_cat(miner.values + miner.errors)  # (P,) upper bounds of the pairs so far
            threshold = found.sort().values[k - 1] if found.numel() >= k else found.new_tensor(float("inf"))
            lower = (row_min - slack).clamp_min(0).sqrt() - self._movement(head)  # (N_r,) ≤ ‖q_b − k_n‖, some b
            candidate = lower <= (threshold + slack).sqrt()
            candidate[first - self.shard.start] = False
            rest = candidate.nonzero().squeeze(1) + self.shard.start  # (R − |first|,) ascending global rows
            evaluated = int(dist.all_gather_cat(torch.tensor([first.numel() + rest.numel()],
                                                             device=dist.device)).sum())
            fraction = evaluated / n_total
            if fraction > self.max_fraction or fraction * self.cycle_steps > self.cycle_cost:
                return self._full_pass(q, head, positive_rows, k, n_total)
            self._evaluate(miner, q, bound, rest)
        self.cycle_cost, self.cycle_steps = self.cycle_cost + fraction, self.cycle_steps + 1
        self.history.append(MiningStep(evaluated, n_total, False))
        return miner

    def _full_pass(self, q: torch.Tensor, head: Head, positive_rows: torch.Tensor, k: int,
                   n_total: int) -> HardNegativeMiner:
        """Head over every row of the shard (as `mine_hard_negatives`), renewing the cache on the way."""
        shard, ffn, bound = self.shard, head.ffn, HeadBound(head, q.device)
        n_r = shard.rows.shape[0]
        cache = torch.empty(n_r, head.descriptor_dim, dtype=torch.float16, device=shard.device)
        input_norm, hidden_norm, rounding = (torch.empty(n_r, device=shard.device) for _ in range(3))
        miner = HardNegativeMiner(k, positive_rows)
        q64 = q.double()  # (B, E): the certified pass's arithmetic (`qk.certify`)
        q_norm = q64.norm(dim=1)  # (B,)
        for offset, rows in shard.chunks():  # rows (C, F) float32
            keys, key_error, x_norm, h_norm = bound.keys(*shard.split(rows))  # (C, E), (C,) ×3, float64
            d2 = squared_distances(q64, keys, torch.float64)  # (B, C)
            miner.update(d2, offset, bound.pair_error(q_norm, keys, key_error, d2))
            local = slice(offset - shard.start, offset - shard.start + rows.shape[0])
            cache[local] = keys.half()
            rounding[local] = ((keys - cache[local].double()).norm(dim=1) + key_error).float()  # ≥ ‖k⁰ − k̃‖
            input_norm[local], hidden_norm[local] = x_norm.float(), h_norm.float()
        self.cache, self.input_norm, self.hidden_norm, self.rounding = cache, input_norm, hidden_norm, rounding
        self.cache_norm = cache.float().norm(dim=1) if n_r else input_norm
        self.weights = [p.detach().clone() for p in (ffn[0].weight, ffn[0].bias, ffn[2].weight, ffn[2].bias)]
        self.cycle_cost, self.cycle_steps = 1.0, 1
        self.history.append(MiningStep(n_total, n_total, True))
        return miner

    def _cached_pass(self, q: torch.Tensor, positive_rows: torch.Tensor,
                     k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Distances to the cached descriptors: the rows of the K smallest pairs (ascending, global), each row's
        smallest squared distance to a query it is a negative of (N_r,), and the rounding slack γ·(‖q‖ + ‖k̃‖)²."""
        shard, start = self.shard, self.shard.start
        nearest = HardNegativeMiner(k, positive_rows)
        row_min = torch.empty(shard.rows.shape[0], device=shard.device)
        for s in range(0, shard.rows.shape[0], shard.chunk_rows):
            d2 = squared_distances(q, self.cache[s:s + shard.chunk_rows].float())  # (B, C) float32
            local = positive_rows - start - s  # (B,)
            inside = (local >= 0) & (local < d2.shape[1])
            d2[inside.nonzero().squeeze(1), local[inside]] = float("inf")
            nearest.update(d2, start + s)
            row_min[s:s + d2.shape[1]] = d2.min(0).values
        norms = q.norm(dim=1).max() + (self.cache_norm.max() if self.cache_norm.numel() else 0.0)
        slack = 2 * gamma(q.shape[1] + 3, gemm_unit(q.device)) * norms ** 2
        return torch.unique(nearest.rows), row_min, slack

    def _movement(self, head: Head) -> torch.Tensor:
        """(N_r,) bounds on ‖k_n − k̃_n‖ at the head's current weights: δ_n + r_n + float slack."""
        ffn = head.ffn
        w1, b1, w2, b2 = (p.detach() for p in (ffn[0].weight, ffn[0].bias, ffn[2].weight, ffn[2].bias))
        w1_0, b1_0, w2_0, b2_0 = self.weights
        if torch.equal(w1, w1_0) and torch.equal(b1, b1_0) and torch.equal(w2, w2_0) and torch.equal(b2, b2_0):
            delta = torch.zeros_like(self.input_norm)
        else:
            delta = head.scale * (spectral_norm(w2) * (spectral_norm(w1 - w1_0) * self.input_norm
                                                       + float((b1 - b1_0).norm()))
                                  + spectral_norm(w2 - w2_0) * self.hidden_norm + float((b2 - b2_0).norm()))
            delta = delta * (1 + 1e-5)  # (N_r,) float32 rounding of this bound itself
        return delta + self.rounding + DESCRIPTOR_SLACK * (self.cache_norm + 1e-3)

    def _evaluate(self, miner: HardNegativeMiner, q: torch.Tensor, bound: HeadBound, rows: torch.Tensor) -> None:
        """Head over `rows` (R,) ascending global rows of the shard, in chunks; distances and bounds into `miner`."""
        q64 = q.double()  # (B, E)
        q_norm = q64.norm(dim=1)  # (B,)
        for s in range(0, rows.numel(), self.shard.chunk_rows):
            index = rows[s:s + self.shard.chunk_rows]
            keys, key_error, _, _ = bound.keys(*self.shard.split(self.shard.take(index)))  # (C, E), (C,) float64
            d2 = squared_distances(q64, keys, torch.float64)  # (B, C)
            miner.update_rows(d2, index.to(q.device), bound.pair_error(q_norm, keys, key_error, d2))

    def summary(self) -> dict:
        """Steps, full passes and the mean fraction of rows evaluated per step so far."""
        steps = len(self.history)
        mean = sum(h.evaluated / h.rows for h in self.history) / steps if steps else float("nan")
        return dict(steps=steps, full_passes=sum(h.full for h in self.history), mean_fraction_evaluated=mean)
