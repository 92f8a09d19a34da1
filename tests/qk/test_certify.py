"""The certified choice of hard negatives: rigorous rounding bounds, and the same set as a brute-force reference
on adversarial banks (duplicates, 1-ulp near-ties, duplicates across chunk boundaries) for every chunking and
for the bounded miner. Run under other kernels too (.ci/run): MKL_ENABLE_INSTRUCTIONS, ATEN_CPU_CAPABILITY."""

import pytest
import torch

from qkcopy.model.descriptor import Head
from qkcopy.qk.bank import BankShard
from qkcopy.qk.certify import HeadBound, choose_pairs, gemm_unit, reference_distances
from qkcopy.qk.loss import LossConfig, squared_distances
from qkcopy.qk.mining import BoundedMiner
from qkcopy.qk.step import colearn_loss, mine_hard_negatives

D, E, H = 20, 8, 32
N, B, M = 300, 7, 4
CHUNKINGS = (1, 37, 48, 8192)


def adversarial_bank(seed: int) -> torch.Tensor:
    """(N, D + E) fp16 rows: random, with exact duplicates (some across chunk boundaries 37/48) and rows one
    fp16 ulp apart (near-ties below any float32 GEMM's rounding of the distance)."""
    g = torch.Generator().manual_seed(seed)
    bank = torch.randn(N, D + E, generator=g).half()
    for a, b in ((3, N - 1), (36, 37), (47, 48), (95, 96), (10, 200), (10, 201), (150, 151)):
        bank[b] = bank[a]
    for a, b in ((60, 61), (120, 121)):
        row = bank[a].clone()
        row[0] = torch.nextafter(row[0].float(), torch.tensor(10.0)).half()  # 1 ulp of float16 (as float32)
        bank[b] = row
    return bank


def problem(seed: int, feature_norm: bool, scale: float = 0.5):
    torch.manual_seed(seed)
    head = Head(D, E, H, scale=scale, feature_norm=feature_norm)
    bank = adversarial_bank(seed)
    g = torch.Generator().manual_seed(seed + 1)
    rows = torch.randperm(N, generator=g)[:B]
    rows[0], rows[1] = 3, 36  # positives that have duplicates: their twins are the hardest negatives
    # queries near bank rows' descriptors, two of them equal: (batch, row) ties between queries too
    with torch.no_grad():
        keys = head(bank[rows].float()[:, :D], bank[rows].float()[:, D:])
    q = keys + 0.05 * torch.randn(B, E, generator=g)
    q[4] = q[5]
    return head, bank, q, rows


def brute_force(head, bank, q, positive_rows, k):
    """The K smallest (c, batch, row) over all pairs, c from reference_distances: the definition itself."""
    b = torch.arange(B).repeat_interleave(N)
    n = torch.arange(N).repeat(B)
    keep = n != positive_rows[b]
    b, n = b[keep], n[keep]
    rows = bank[n].float()
    c = reference_distances(head, rows[:, :D], rows[:, D:], q[b])
    order = torch.argsort(n, stable=True)
    order = order[torch.argsort(b[order], stable=True)]
    order = order[torch.argsort(c[order], stable=True)][:k]
    pairs = torch.stack([b[order], n[order]], 1)
    return pairs[torch.argsort(pairs[:, 0] * N + pairs[:, 1])]


@pytest.mark.parametrize("feature_norm", [False, True])
@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_bounds_cover_the_mining_arithmetic(feature_norm, chunk):
    head, bank, q, _ = problem(1, feature_norm, scale=3.0)  # a large scale: the head's rounding matters
    bound = HeadBound(head, q.device)
    rows = bank.float()
    c_all = []
    for s in range(0, N, chunk):
        keys, key_error, _, _ = bound.keys(rows[s:s + chunk, :D], rows[s:s + chunk, D:])
        d2 = squared_distances(q.double(), keys, torch.float64)  # (B, C), as the mining pass computes it
        eps = bound.pair_error(q.norm(dim=1), keys, key_error, d2)
        c = reference_distances(head, rows[s:s + chunk, :D].repeat(B, 1), rows[s:s + chunk, D:].repeat(B, 1),
                                q.repeat_interleave(keys.shape[0], 0)).view(B, -1)
        assert ((d2.double() - c).abs() <= eps.double()).all()
        c_all.append(((d2.double() - c).abs() / eps.double()).max())
    assert max(c_all) > 1e-4  # the bound is within a few orders of the real error, not vacuous


@pytest.mark.parametrize("feature_norm", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_pass_chooses_the_reference_set_for_every_chunking(seed, feature_norm):
    head, bank, q, positive_rows = problem(seed, feature_norm)
    k = B * M
    want = brute_force(head, bank, q, positive_rows, k)
    for chunk in CHUNKINGS:
        shard = BankShard(bank, 0, D, chunk)
        result = colearn_loss(q.clone().requires_grad_(), positive_rows, head, shard, LossConfig(tau=0.5,
                              negatives_per_positive=M))
        assert torch.equal(result.negatives, want), f"chunk {chunk}"


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_bounded_miner_chooses_the_reference_set_as_the_head_moves(chunk):
    head, bank, q, positive_rows = problem(4, False)
    shard = BankShard(bank, 0, D, chunk)
    miner = BoundedMiner(shard)
    cfg = LossConfig(tau=0.5, negatives_per_positive=M)
    g = torch.Generator().manual_seed(9)
    for step in range(5):
        result = colearn_loss(q.clone().requires_grad_(), positive_rows, head, shard, cfg, miner=miner)
        assert torch.equal(result.negatives, brute_force(head, bank, q, positive_rows, B * M)), f"step {step}"
        with torch.no_grad():  # the frozen side's head moves a little, as under partial freeze
            for p in head.parameters():
                p.add_(1e-4 * torch.randn(p.shape, generator=g))
    assert any(not h.full for h in miner.history)


def test_duplicates_are_settled_by_batch_then_row():
    """Two identical rows at the same distance: the lower row goes first, on any path."""
    head, bank, q, positive_rows = problem(0, False)
    k = B * M
    shards = [BankShard(bank, 0, D, 37), BankShard(bank, 0, D, 8192)]
    found = [mine_hard_negatives(q, head, s.chunks(), D, positive_rows, k) for s in shards]
    chosen = [colearn_loss(q.clone().requires_grad_(), positive_rows, head, s,
                           LossConfig(tau=0.5, negatives_per_positive=M)).negatives for s in shards]
    assert torch.equal(chosen[0], chosen[1])
    # batch 0's positive is row 3, whose twin N−1 is its hardest negative: chosen at distance ~0
    assert (chosen[0][:, 0] == 0).logical_and(chosen[0][:, 1] == N - 1).any()
    assert all(m.values.numel() >= k for m in found)


def test_choose_pairs_by_hand():
    values = torch.tensor([1.0, 2.0, 2.0, 3.0, 5.0])
    errors = torch.tensor([0.0, 0.5, 0.5, 0.1, 0.0])
    batch = torch.tensor([0, 1, 0, 0, 0])
    rows = torch.tensor([10, 11, 12, 13, 14])
    asked = []

    def reference(b, r):  # the pairs 11 and 12 overlap ([1.5, 2.5]); 10 is in and 13, 14 out by bounds alone
        asked.append(r.tolist())
        return torch.tensor([2.2, 2.1], dtype=torch.float64)[:r.numel()]

    b, r, n_open = choose_pairs(values, errors, batch, rows, 2, reference)
    assert sorted(asked[0]) == [11, 12] and n_open == 2
    assert r.tolist() == [10, 12] and b.tolist() == [0, 0]  # 12 (c 2.1) beats 11 (c 2.2)
    b, r, n_open = choose_pairs(values, errors, batch, rows, 3, reference)
    assert r.tolist() == [10, 12, 11] and n_open == 0  # both overlapping pairs fit: no reference needed
    # equal values and no bounds: (batch, row) order, as smallest_pairs
    b, r, _ = choose_pairs(torch.ones(3), torch.zeros(3), torch.tensor([1, 0, 0]), torch.tensor([5, 9, 7]), 2, None)
    assert list(zip(b.tolist(), r.tolist())) == [(0, 7), (0, 9)]
    # fewer candidates than K: all of them
    b, r, _ = choose_pairs(values[:2], errors[:2], batch[:2], rows[:2], 5, reference)
    assert r.tolist() == [10, 11]


def test_gemm_unit_follows_matmul_precision():
    before = torch.get_float32_matmul_precision()
    try:
        assert gemm_unit(torch.device("cpu")) == 2.0 ** -24
        torch.set_float32_matmul_precision("medium")
        assert gemm_unit(torch.device("cpu")) == 2.0 ** -8
    finally:
        torch.set_float32_matmul_precision(before)


def test_bounds_are_tight_on_a_real_sized_pca_initialised_head():
    """The shipped head's sizes (D 1280, H 1024, E 256) and its PCA start (‖W1‖_F in the hundreds): the bound
    must leave no pair open on a bank without duplicates (a vacuous bound makes every pair open, and the
    reference pass then costs seconds per step), and only the duplicates' pairs open when there are some."""
    from qkcopy.model.descriptor import init_heads_from_pca

    d, e, n, b, m = 1280, 256, 1500, 32, 10
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(n, d, generator=g) * torch.linspace(0.1, 0.003, d)  # small, decaying: as CNN features
    g256 = torch.nn.functional.normalize(torch.randn(n, e, generator=g), dim=1)
    head = Head(d, e, 1024)
    init_heads_from_pca([head], feat, g256, 0.5)
    assert head.ffn[0].weight.norm() > 100
    bank = torch.cat([feat, g256], 1).half()
    bank[n - 1] = bank[7]  # one duplicate pair
    positive_rows = torch.arange(b) * 40
    with torch.no_grad():
        q = head(bank[positive_rows, :d].float(), bank[positive_rows, d:].float())
        q = q + 0.05 * torch.randn(q.shape, generator=g)
    k = b * m
    found = mine_hard_negatives(q, head, BankShard(bank, 0, d, 512).chunks(), d, positive_rows, k)
    assert float(found.errors.max()) < 1e-6 * float(found.values.min() + 1)
    _, _, n_open = choose_pairs(found.values, found.errors, found.batch_index, found.rows, k, None)
    assert found.values.numel() <= k + 2 and n_open <= 2
