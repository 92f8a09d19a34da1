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
c is computed for few pairs: each path computes d̂ with whatever kernel, plus a rigorous bound
ε ≥ |d̂ − c| (`HeadBound`, `pair_error`). With U the K-th smallest d̂ + ε, a pair is settled in when fewer than K
other pairs have d̂ − ε below its d̂ + ε, and out when K pairs have d̂ + ε below its d̂ − ε; only the rest (ties,
duplicates, near-ties: usually none or a handful) get c (`choose_pairs`).

Arithmetic. The mining pass computes the head and d̂ in float64 (the loss and its gradients stay in the
model's float32/AMP): a rigorous bound on float32 GEMM rounding grows with the head's weight norms and width
(≈ 0.2 on a key of norm 1.7 for the PCA-initialised head, where the real error is 4·10⁻⁷), so nearly every pair
would be open; in float64 the same bound is ≈ 10⁻⁹ and only duplicates and true near-ties stay open. The cost is
one float64 head pass over the rows mined (≈ 2× a float32 one on a CPU; see docs/RELIABILITY.md).

Bounds. u = 2⁻⁵³ (float64, for elementwise ops and GEMMs alike: TF32/bf16 never apply to float64);
γ_n = n·u / (1 − n·u). For any summation order (blocking, FMA, threads) |fl(Σ_i a_i b_i) − Σ_i a_i b_i| ≤
γ_n Σ_i |a_i b_i|, so for y = W x + b, ‖ŷ − y‖ ≤ γ_{n+1}(‖W‖_F ‖x‖ + ‖b‖). Through the paper's head
k = g + s·(W2·ReLU(W1·x + b1) + b2) (ReLU is 1-Lipschitz):
    e_z = γ_{F+1}(‖W1‖_F ‖x̂‖ + ‖b1‖) + ‖W1‖_F e_x        (e_x: feature normalisation, γ_{D+3}‖x̂_D‖)
    e_o = γ_{H+1}(‖W2‖_F ‖ĥ‖ + ‖b2‖) + ‖W2‖_F e_z
    e_k = s·e_o + 2u(‖g‖ + s‖ô‖)
and for d̂ = ‖q‖² + ‖k̂‖² − 2q·k̂:  |d̂ − ‖q − k‖²| ≤ γ_{E+3}(‖q‖ + ‖k̂‖)² + e_k(2√(d̂ + that) + e_k). The reference
c is the same function in the same float64 arithmetic (sums of the same lengths), so the same bound holds for
|c − ‖q − k‖²| and ε = 2× it bounds |d̂ − c|; every bound is widened by 1 % (the rounding of its own arithmetic).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qkcopy.model.descriptor import Head

UNIT = 2.0 ** -24  # float32 unit roundoff (gemm_unit: a float32 GEMM under the matmul precision settings)
UNIT64 = 2.0 ** -53  # float64 unit roundoff: the mining pass's arithmetic
WIDEN = 1.01  # a bound's own arithmetic

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
            self.weight1, self.bias1 = lin1.weight.detach().double(), lin1.bias.detach().double()  # (H, F), (H,)
            self.weight2, self.bias2 = lin2.weight.detach().double(), lin2.bias.detach().double()  # (E, H), (E,)
            self.w1, self.b1 = float(self.weight1.norm()), float(self.bias1.norm())
            self.w2, self.b2 = float(self.weight2.norm()), float(self.bias2.norm())
        self.gamma1 = gamma(lin1.in_features + 1, UNIT64)
        self.gamma2 = gamma(lin2.in_features + 1, UNIT64)
        self.gamma_norm = gamma(head.feature_dim + 3, UNIT64) if head.feature_norm else 0.0
        self.gamma_dist = gamma(head.descriptor_dim + 3, UNIT64)

    @torch.no_grad()
    def keys(self, feat: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
        """(feat (C, D), g (C, E)) → keys (C, E), their error bound e_k (C,), ‖x̂‖ (C,), ‖ĥ‖ (C,), all float64."""
        head = self.head
        feat, g = feat.double(), g.double()  # exact: the bank's rows are float16/float32
        f = nn.functional.normalize(feat, dim=1) if head.feature_norm else feat  # (C, D)
        x = torch.cat([f, g], 1)  # (C, F)
        hidden = torch.addmm(self.bias1, x, self.weight1.T).clamp_min_(0)  # (C, H)
        out = torch.addmm(self.bias2, hidden, self.weight2.T)  # (C, E)
        keys = g + head.scale * out  # (C, E) float64
        x_norm, h_norm = x.norm(dim=1), hidden.norm(dim=1)  # (C,) each
        e_x = self.gamma_norm * f.norm(dim=1)
        e_z = self.gamma1 * (self.w1 * x_norm + self.b1) + self.w1 * e_x
        e_o = self.gamma2 * (self.w2 * h_norm + self.b2) + self.w2 * e_z
        e_k = head.scale * e_o + 2 * UNIT64 * (g.norm(dim=1) + head.scale * out.norm(dim=1))
        return keys, WIDEN * e_k, x_norm, h_norm

    def pair_error(self, q_norm: torch.Tensor, keys: torch.Tensor, key_error: torch.Tensor,
                   d2: torch.Tensor) -> torch.Tensor:
        """Bounds (B, C) on |d̂ − c| for d2 (B, C) float64 from `squared_distances` of queries (norms (B,)) and
        `keys` (float64)."""
        scale2 = (q_norm.double()[:, None] + keys.norm(dim=1)[None, :]).pow(2)  # (B, C)
        expansion = self.gamma_dist * scale2
        moved = key_error[None, :] * (2 * (d2 + expansion).sqrt() + key_error[None, :])
        return 2 * WIDEN * (expansion + moved)  # (B, C) float64: d̂'s error plus c's


@torch.no_grad()
def reference_keys(head: Head, feat: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """head(feat_n, g_n) (U, E) float64, one row at a time with the same shapes for every row.

    feat (U, D), g (U, E). No GEMM: each product is an elementwise multiply and a sum along a contiguous axis of
    fixed length, so a row's key does not depend on which rows were evaluated with it, nor on the kernel's
    blocking (a float64 sum's order may still vary; its rounding is inside the bound, `HeadBound`).
    """
    if feat.ndim != 2 or g.ndim != 2 or feat.shape[0] != g.shape[0]:
        raise ValueError(f"expected feat (U, D) and g (U, E), got {tuple(feat.shape)} and {tuple(g.shape)}")
    ffn = head.ffn
    w1, b1 = ffn[0].weight.double(), ffn[0].bias.double()  # (H, F), (H,)
    w2, b2 = ffn[2].weight.double(), ffn[2].bias.double()  # (E, H), (E,)
    out = torch.empty(g.shape, dtype=torch.float64, device=g.device)
    for n in range(feat.shape[0]):
        f, gn = feat[n].double(), g[n].double()  # (D,), (E,)
        if head.feature_norm:
            f = f / f.norm().clamp_min(1e-12)
        hidden = ((w1 * torch.cat([f, gn])[None, :]).sum(1) + b1).clamp_min(0)  # (H,)
        out[n] = gn + head.scale * ((w2 * hidden[None, :]).sum(1) + b2)  # (E,)
    return out


def reference_distances(head: Head, feat: torch.Tensor, g: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """c = ‖q_p − head(feat_p, g_p)‖² (P,) float64 for P pairs: feat (P, D), g (P, E), queries (P, E).

    Each distinct bank row's key is computed once (`reference_keys`); duplicates get equal c.
    """
    if feat.shape[0] != g.shape[0] or g.shape != queries.shape:
        raise ValueError(f"expected feat (P, D), g (P, E), queries (P, E), got {tuple(feat.shape)}, "
                         f"{tuple(g.shape)}, {tuple(queries.shape)}")
    rows, inverse = torch.unique(torch.cat([feat, g], 1).float(), dim=0, return_inverse=True)  # (U, F), (P,)
    keys = reference_keys(head, rows[:, :feat.shape[1]], rows[:, feat.shape[1]:])  # (U, E)
    return (queries.double() - keys[inverse]).pow(2).sum(1)  # (P,)


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
