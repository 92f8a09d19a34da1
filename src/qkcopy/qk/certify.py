"""A certified choice of the K hardest pairs: the same set whatever the BLAS kernel, chunking, batch layout or rank.

Letters: B batch, C rows in one chunk, P candidate pairs, K = B·M pairs to choose, D backbone feature dim,
E descriptor dim, F = D + E head input width, H hidden width.

Why. A float32 GEMM's last bits depend on the kernel (AVX2, AVX-512, AMX, a GPU) and on where a row sits in
the call (M-blocking, tails, chunk size). So a choice made by comparing computed distances — the full pass over
8192-row chunks, the bounded miner over scattered rows, W ranks over their shards — agrees across paths only
where no two candidate distances lie within rounding of each other. Exact duplicate rows (common in real image
collections) are such ties every time: on an AVX-512 machine the full pass and the bounded miner ordered a
duplicate pair differently.

What is chosen, on every path. The K smallest pairs in the order (c, batch index, row), where c, the pair's
reference distance, is ‖q_b − k_n‖² computed by `reference_distances` one row at a time in float64, with the
same shapes for every row (so a row's c does not depend on where it came from, and duplicates get equal c).
c is computed for few pairs: each path computes d̂ in float32 with whatever kernel, plus a rigorous bound
ε ≥ |d̂ − c| (`HeadBound`, `pair_error`). With U the K-th smallest d̂ + ε, a pair is settled in when fewer than K
other pairs have d̂ − ε below its d̂ + ε, and out when K pairs have d̂ + ε below its d̂ − ε; only the rest (ties,
duplicates, near-ties: usually none or a handful) get c (`choose_pairs`).

Bounds. u = 2⁻²⁴ for elementwise float32, u_g for GEMMs (2⁻²⁴ at float32 matmul precision "highest"; 2⁻¹¹
where TF32 is allowed, 2⁻⁸ at "medium"); γ_n = n·u / (1 − n·u). For any summation order (blocking, FMA,
threads) |fl(Σ_i a_i b_i) − Σ_i a_i b_i| ≤ γ_n Σ_i |a_i b_i|, so for y = W x + b, ‖ŷ − y‖ ≤ γ_{n+1}(‖W‖_F ‖x‖ + ‖b‖).
Through the paper's head k = g + s·(W2·ReLU(W1·x + b1) + b2) (ReLU is 1-Lipschitz):
    e_z = γ_{F+1}(‖W1‖_F ‖x̂‖ + ‖b1‖) + ‖W1‖_F e_x        (e_x: feature normalisation, γ_{D+3}‖x̂_D‖)
    e_o = γ_{H+1}(‖W2‖_F ‖ĥ‖ + ‖b2‖) + ‖W2‖_F e_z
    e_k = s·e_o + 2u(‖g‖ + s‖ô‖)
and for d̂ = ‖q‖² + ‖k̂‖² − 2q·k̂:  |d̂ − ‖q − k‖²| ≤ γ_{E+3}(‖q‖ + ‖k̂‖)² + e_k(2√(d̂ + that) + e_k). Every bound is
widened by 1 % (the rounding of the bound's own arithmetic) plus 10⁻¹⁰(‖q‖ + ‖k̂‖)² (the float64 reference's).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qkcopy.model.descriptor import Head

UNIT = 2.0 ** -24  # float32 unit roundoff
WIDEN = 1.01  # a bound's own float32 arithmetic
REFERENCE_SLACK = 1e-10  # the float64 reference's distance from the exact value, relative to (‖q‖ + ‖k‖)²

# (batch index (U,), rows (U,)) -> reference distances (U,) float64 of those pairs
Reference = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gemm_unit(device: torch.device) -> float:
    """Unit roundoff of a float32 matmul under torch's current precision settings on `device`."""
    precision = torch.get_float32_matmul_precision()
    if precision == "medium":
        return 2.0 ** -8  # bfloat16 products allowed
    if precision == "high" or (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32):
        return 2.0 ** -11  # TF32
    return UNIT


def gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def certifiable(head: object) -> bool:
    """The paper-variant float32 `Head` (the only head whose rounding `HeadBound` bounds)."""
    return isinstance(head, Head) and head.refine is None and head.ffn[0].weight.dtype == torch.float32


class HeadBound:
    """The head's keys with a per-row bound on their float32 rounding, for one set of weights (one step)."""

    def __init__(self, head: Head, device: torch.device):
        if not certifiable(head):
            raise ValueError("certified mining needs the paper-variant float32 Head (model.variant=paper)")
        self.head = head
        lin1, lin2 = head.ffn[0], head.ffn[2]
        with torch.no_grad():
            self.w1, self.b1 = float(lin1.weight.double().norm()), float(lin1.bias.double().norm())
            self.w2, self.b2 = float(lin2.weight.double().norm()), float(lin2.bias.double().norm())
        ug = gemm_unit(device)
        self.unit = ug
        self.gamma1 = gamma(lin1.in_features + 1, ug)
        self.gamma2 = gamma(lin2.in_features + 1, ug)
        self.gamma_norm = gamma(head.feature_dim + 3, UNIT) if head.feature_norm else 0.0
        self.gamma_dist = gamma(head.descriptor_dim + 3, ug)

    @torch.no_grad()
    def keys(self, feat: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
        """(feat (C, D), g (C, E)) float32 → keys (C, E), their error bound e_k (C,), ‖x̂‖ (C,), ‖ĥ‖ (C,)."""
        head, ffn = self.head, self.head.ffn
        f = nn.functional.normalize(feat, dim=1) if head.feature_norm else feat  # (C, D)
        x = torch.cat([f, g], 1)  # (C, F)
        hidden = ffn[1](ffn[0](x))  # (C, H), as Head.forward computes it
        out = ffn[2](hidden)  # (C, E)
        keys = g + head.scale * out  # (C, E) float32
        x_norm, h_norm = x.norm(dim=1), hidden.norm(dim=1)  # (C,) each
        e_x = self.gamma_norm * f.norm(dim=1)
        e_z = self.gamma1 * (self.w1 * x_norm + self.b1) + self.w1 * e_x
        e_o = self.gamma2 * (self.w2 * h_norm + self.b2) + self.w2 * e_z
        e_k = head.scale * e_o + 2 * UNIT * (g.norm(dim=1) + head.scale * out.norm(dim=1))
        return keys, WIDEN * e_k, x_norm, h_norm

    def pair_error(self, q_norm: torch.Tensor, keys: torch.Tensor, key_error: torch.Tensor,
                   d2: torch.Tensor) -> torch.Tensor:
        """Bounds (B, C) on |d̂ − c| for d2 (B, C) from `squared_distances` of queries (norms (B,)) and keys."""
        scale2 = (q_norm[:, None] + keys.norm(dim=1)[None, :]).pow(2)  # (B, C)
        expansion = self.gamma_dist * scale2
        moved = key_error[None, :] * (2 * (d2 + expansion).sqrt() + key_error[None, :])
        return WIDEN * (expansion + moved) + REFERENCE_SLACK * scale2  # (B, C) float32


@torch.no_grad()
def reference_distances(head: Head, feat: torch.Tensor, g: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """c = ‖q_p − head(feat_p, g_p)‖² (P,) float64, one pair at a time with the same shapes for every pair.

    feat (P, D), g (P, E), queries (P, E). No GEMM: each product is an elementwise multiply and a sum along a
    contiguous axis of fixed length, so a row's value does not depend on which rows were evaluated with it.
    """
    if feat.shape[0] != g.shape[0] or g.shape != queries.shape:
        raise ValueError(f"expected feat (P, D), g (P, E), queries (P, E), got {tuple(feat.shape)}, "
                         f"{tuple(g.shape)}, {tuple(queries.shape)}")
    ffn = head.ffn
    w1, b1 = ffn[0].weight.double(), ffn[0].bias.double()  # (H, F), (H,)
    w2, b2 = ffn[2].weight.double(), ffn[2].bias.double()  # (E, H), (E,)
    out = torch.empty(feat.shape[0], dtype=torch.float64, device=feat.device)
    for p in range(feat.shape[0]):
        f, gp = feat[p].double(), g[p].double()  # (D,), (E,)
        if head.feature_norm:
            f = f / f.norm().clamp_min(1e-12)
        hidden = ((w1 * torch.cat([f, gp])[None, :]).sum(1) + b1).clamp_min(0)  # (H,)
        key = gp + head.scale * ((w2 * hidden[None, :]).sum(1) + b2)  # (E,)
        out[p] = (queries[p].double() - key).pow(2).sum()
    return out


def choose_pairs(values: torch.Tensor, errors: torch.Tensor, batch_index: torch.Tensor, rows: torch.Tensor,
                 k: int, reference: Reference | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The K smallest pairs in (c, batch index, row) order, from candidates d̂ (P,) with bounds ε (P,).

    The candidates must hold every pair that can be among the K (a miner keeps every pair with d̂ − ε ≤ the K-th
    smallest d̂ + ε). Without `reference` (ε = 0: a head whose rounding is not bounded) c is d̂ itself.
    Returns (batch index (K,), rows (K,)) sorted by (batch index, row), and how many pairs needed c.
    """
    if not values.shape == errors.shape == batch_index.shape == rows.shape or values.ndim != 1:
        raise ValueError(f"expected four (P,) tensors, got {[tuple(t.shape) for t in (values, errors, batch_index, rows)]}")
    upper, lower = values.double() + errors.double(), values.double() - errors.double()  # (P,) each
    if values.numel() > k:
        sorted_lower, sorted_upper = lower.sort().values, upper.sort().values
        settled_in = torch.searchsorted(sorted_lower, upper, right=True) - 1 < k  # < K others may precede
        settled_out = torch.searchsorted(sorted_upper, lower) >= k  # ≥ K others surely precede
    else:
        settled_in = torch.ones_like(values, dtype=torch.bool)
        settled_out = ~settled_in
    open_ = ~settled_in & ~settled_out
    need, n_open = k - int(settled_in.sum()), int(open_.sum())
    chosen = settled_in.clone()
    if 0 < need < n_open:
        where = open_.nonzero().squeeze(1)  # (U,)
        c = values[where].double() if reference is None else reference(batch_index[where], rows[where])
        order = torch.argsort(rows[where], stable=True)  # the order (c, batch index, row), as smallest_pairs
        order = order[torch.argsort(batch_index[where][order], stable=True)]
        order = order[torch.argsort(c[order], stable=True)]
        chosen[where[order[:need]]] = True
    elif need > 0:
        chosen |= open_
    order = torch.argsort(rows[chosen], stable=True)
    b, r = batch_index[chosen][order], rows[chosen][order]
    order = torch.argsort(b, stable=True)
    return b[order], r[order], n_open if 0 < need < n_open else 0
