"""The QK loss (paper eq. 1–4) and the hard-negative miner.

Letters: B batch, C rows in one bank chunk, N bank rows, M hard negatives per positive, E descriptor dim.

P(q, k) = exp(−‖q − k‖² / τ) is the probability that (q, k) is a copy pair. The loss is binary cross-entropy on
the B positive pairs plus the B·M hardest negatives of the whole batch against the whole bank:
    L_pos = mean_b −log P(q_b, k_b)            = mean_b ‖q_b − k_b‖² / τ
    L_neg = mean_(b,n) −log(1 − P(q_b, k_n))   over the B·M smallest distances with n ≠ pos(b)
    L     = w_pos · L_pos + w_neg · L_neg
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qkcopy.config import LossConfig

# d²/τ below this is clamped in L_neg so that −log(1 − P) stays finite (P → 1 when a negative coincides).
MIN_SCALED_DISTANCE = 1e-6


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor  # () float32, with grad
    pos: torch.Tensor  # () float32
    neg: torch.Tensor  # () float32


def squared_distances(q: torch.Tensor, k: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All-pairs squared L2, (B, E) × (C, E) → (B, C) in `dtype`, by the GEMM expansion (for selection)."""
    if q.ndim != 2 or k.ndim != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(f"expected q (B, E) and k (C, E) with equal E, got {tuple(q.shape)} and {tuple(k.shape)}")
    q, k = q.to(dtype), k.to(dtype)
    d2 = (q * q).sum(1, keepdim=True) + (k * k).sum(1)[None, :] - 2.0 * torch.einsum("be,ce->bc", q, k)
    return d2.clamp_min_(0.0)  # (B, C)


def qk_loss(d2_pos: torch.Tensor, d2_neg: torch.Tensor, cfg: LossConfig) -> LossParts:
    """Eq. 1–4 from the squared distances of the positive pairs (B,) and the selected negatives (B·M,)."""
    if d2_pos.ndim != 1 or d2_neg.ndim != 1:
        raise ValueError(f"expected d2_pos (B,) and d2_neg (B·M,), got {tuple(d2_pos.shape)}, {tuple(d2_neg.shape)}")
    l_pos = (d2_pos.float() / cfg.tau).mean()
    x = (d2_neg.float() / cfg.tau).clamp_min(MIN_SCALED_DISTANCE)
    l_neg = -torch.log(-torch.expm1(-x)).mean()  # −log(1 − e^−x), stable for small and large x
    return LossParts(total=cfg.w_pos * l_pos + cfg.w_neg * l_neg, pos=l_pos, neg=l_neg)


def smallest_pairs(values: torch.Tensor, batch_index: torch.Tensor, rows: torch.Tensor,
                   k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k smallest (value, batch index, row) triples in lexicographic order: a tie-free, canonical choice."""
    order = torch.argsort(rows, stable=True)
    order = order[torch.argsort(batch_index[order], stable=True)]
    order = order[torch.argsort(values[order], stable=True)][:k]
    return values[order], batch_index[order], rows[order]


class HardNegativeMiner:
    """Running candidates for the K hardest (batch item, bank row) pairs, positives excluded.

    Fed one (B, C) chunk of distances at a time, so the full (B, N) matrix never exists. The K = B·M pairs are
    the global hardest of the whole batch (not M per query), as in the paper. Each pair may carry a bound ε on
    its rounding (`qk.certify`); the miner keeps every pair with d − ε ≤ U, U the K-th smallest d + ε so far
    (with ε = 0: the K smallest and every pair tied with the K-th). `result` picks K of them by (distance,
    batch index, row); `qk.certify.choose_pairs` picks the certified K. Neither depends on how the bank is
    chunked or sharded over ranks.
    """

    def __init__(self, k: int, positive_rows: torch.Tensor):
        if positive_rows.ndim != 1:
            raise ValueError(f"expected positive_rows (B,), got {tuple(positive_rows.shape)}")
        self.k = k
        self.positive_rows = positive_rows  # (B,) int64 bank row of each item's positive
        device = positive_rows.device
        self.values = torch.empty(0, device=device)  # (P,) computed distances d, in the chunks' dtype
        self.errors = torch.empty(0, device=device)  # (P,) bounds ε on their rounding (0: unbounded)
        self.batch_index = torch.empty(0, dtype=torch.long, device=device)  # (P,)
        self.rows = torch.empty(0, dtype=torch.long, device=device)  # (P,) global bank rows

    def update(self, d2: torch.Tensor, row_offset: int, errors: torch.Tensor | None = None) -> None:
        """Add a chunk of distances d2 (B, C) (float32, or float64 when certified) whose columns are bank rows row_offset … row_offset+C−1,
        with optional bounds (B, C) on their rounding."""
        b_count, c_count = d2.shape
        if b_count != self.positive_rows.numel():
            raise ValueError(f"chunk has {b_count} batch rows, expected {self.positive_rows.numel()}")
        local = self.positive_rows - row_offset  # (B,)
        inside = (local >= 0) & (local < c_count)
        if inside.any():
            d2 = d2.clone()
            d2[inside.nonzero().squeeze(1), local[inside]] = float("inf")
        self._merge(d2, errors, None, row_offset)

    def update_rows(self, d2: torch.Tensor, rows: torch.Tensor, errors: torch.Tensor | None = None) -> None:
        """Add distances d2 (B, C) float32 whose columns are the bank rows `rows` (C,) int64, ascending."""
        if d2.ndim != 2 or rows.shape != d2.shape[1:]:
            raise ValueError(f"expected d2 (B, C) and rows (C,), got {tuple(d2.shape)} and {tuple(rows.shape)}")
        if d2.shape[0] != self.positive_rows.numel():
            raise ValueError(f"chunk has {d2.shape[0]} batch rows, expected {self.positive_rows.numel()}")
        d2 = d2.masked_fill(rows[None, :] == self.positive_rows[:, None], float("inf"))  # (B, C)
        self._merge(d2, errors, rows, 0)

    def _merge(self, d2: torch.Tensor, errors: torch.Tensor | None, rows_of_column: torch.Tensor | None,
               row_offset: int) -> None:
        """Keep the pairs of the kept ones and d2 (B, C) (positives already inf) with d − ε ≤ U."""
        c_count = d2.shape[1]
        dtype = torch.promote_types(self.values.dtype, d2.dtype)  # float64 from a certified pass
        flat = d2.reshape(-1).to(dtype)  # (B·C,)
        err = torch.zeros_like(flat) if errors is None else errors.reshape(-1).to(dtype)  # (B·C,)
        upper = flat + err
        best = torch.topk(upper, min(self.k, flat.numel()), largest=False, sorted=False).values
        pool = torch.cat([self.values + self.errors, best])
        bound = pool.kthvalue(self.k).values if pool.numel() >= self.k else pool.new_tensor(float("inf"))
        flat_index = ((flat - err <= bound) & torch.isfinite(flat)).nonzero().squeeze(1)  # (P_new,)
        keep = self.values - self.errors <= bound  # the kept pairs U rules out now
        self.values, self.errors = self.values.to(dtype), self.errors.to(dtype)
        columns = flat_index % c_count
        self.values = torch.cat([self.values[keep], flat[flat_index]])
        self.errors = torch.cat([self.errors[keep], err[flat_index]])
        self.batch_index = torch.cat([self.batch_index[keep], flat_index // c_count])
        self.rows = torch.cat([self.rows[keep], columns + row_offset if rows_of_column is None
                               else rows_of_column[columns]])

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values, batch_index, rows) of the K kept pairs smallest by (distance, batch index, row), each (K,)."""
        return smallest_pairs(self.values, self.batch_index, self.rows, self.k)
