"""The bounded miner chooses the full pass's negatives, step after step with Adam updates in between."""

import pytest
import torch
from torch import nn

from qkcopy.model.descriptor import Head
from qkcopy.qk.bank import BankShard
from qkcopy.qk.loss import LossConfig
from qkcopy.qk.mining import BoundedMiner, spectral_norm
from qkcopy.qk.step import colearn_loss

D, E, H = 12, 6, 16  # backbone feature, descriptor (= gist) and hidden dims
N, B = 400, 6
CFG = LossConfig(tau=0.5, negatives_per_positive=3)


def make_problem(seed=0, feature_norm=False):
    """A trained encoder (queries), the frozen side's real Head, an fp16 bank with duplicate rows."""
    torch.manual_seed(seed)
    encoder = nn.Linear(9, E)
    head = Head(D, E, H, scale=0.2, feature_norm=feature_norm)
    bank = torch.randn(N, D + E).half()
    bank[N - 1] = bank[3]  # exact duplicates: tied distances
    bank[N // 2] = bank[N // 2 + 1]
    return encoder, head, bank


def batch_at(step, seed=0):
    g = torch.Generator().manual_seed(1000 * seed + step)
    return torch.randn(B, 9, generator=g), torch.randperm(N, generator=g)[:B]


def grads(*modules):
    return [p.grad.clone() if p.grad is not None else None for m in modules for p in m.parameters()]


def assert_same_step(got, want, got_grads, want_grads):
    assert torch.equal(got.negatives, want.negatives)
    assert torch.equal(got.loss.total, want.loss.total)
    assert torch.equal(got.d2_neg, want.d2_neg)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert (g is None and w is None) or torch.equal(g, w)


def run_steps(encoder, head, bank, shard_of, steps, full_freeze, lr=3e-3, seed=0, dist=None, batch_part=None):
    """`steps` Adam steps; at each, the bounded step and the full pass on the same weights must agree.

    With `dist` (several ranks) each rank takes `batch_part` of the batch and `shard_of(bank)` of the bank, and
    the step is also checked against one process over the whole batch and bank (same negatives, close loss).
    """
    head.requires_grad_(not full_freeze)
    params = [p for m in (encoder, head) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    shard = shard_of(bank)
    miner = BoundedMiner(shard)
    for step in range(steps):
        x, positive_rows = batch_at(step, seed)
        if batch_part is not None:
            x, positive_rows = x[batch_part], positive_rows[batch_part]
        results = []
        for m in (None, miner):
            opt.zero_grad(set_to_none=True)
            result = colearn_loss(encoder(x), positive_rows, head, shard, CFG, dist, miner=m)
            result.loss.total.backward()
            if dist is not None:
                dist.all_reduce_mean_grads(params)
            results.append((result, grads(encoder, head)))
        (want, want_grads), (got, got_grads) = results
        assert_same_step(got, want, got_grads, want_grads)
        if dist is not None:
            with torch.no_grad():
                whole = colearn_loss(encoder(batch_at(step, seed)[0]), batch_at(step, seed)[1], head,
                                     BankShard(bank, 0, D, 64), CFG)
            assert torch.equal(got.negatives, whole.negatives)
            torch.testing.assert_close(got.loss.total, whole.loss.total, rtol=1e-5, atol=1e-6)
        opt.step()  # the grads of the bounded step (equal to the full pass's)
    return miner


@pytest.mark.parametrize("full_freeze", [False, True])
@pytest.mark.parametrize("feature_norm", [False, True])
def test_bounded_miner_equals_full_pass_step_after_step(full_freeze, feature_norm):
    encoder, head, bank = make_problem(feature_norm=feature_norm)
    miner = run_steps(encoder, head, bank, lambda b: BankShard(b, 0, D, 64), 12, full_freeze)
    history = miner.history
    assert history[0].full and len(history) == 12
    bounded = [h for h in history if not h.full]
    assert bounded, "every step was a full pass: the bounds never excluded a row"
    assert all(h.evaluated < N for h in bounded)
    assert min(h.evaluated for h in bounded) < N // 2
    if full_freeze:  # the frozen head never moves: one full pass, then only rows the cache cannot exclude
        assert sum(h.full for h in history) == 1
    summary = miner.summary()
    assert summary["steps"] == 12 and 0 < summary["mean_fraction_evaluated"] < 1


def test_bounds_hold_when_the_head_moves_far():
    """A large learning rate loosens the bounds: the miner falls back to full passes and stays exact."""
    encoder, head, bank = make_problem(seed=3)
    miner = run_steps(encoder, head, bank, lambda b: BankShard(b, 0, D, 50), 6, False, lr=0.3, seed=3)
    assert sum(h.full for h in miner.history) >= 2


def test_movement_bounds_the_true_descriptor_change():
    encoder, head, bank = make_problem(seed=5)
    shard = BankShard(bank, 0, D, 64)
    miner = BoundedMiner(shard)
    x, positive_rows = batch_at(0, 5)
    miner.mine(encoder(x).detach(), head, positive_rows, 12, _dist())
    before = miner.cache.float()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.01 * torch.randn_like(p))
        rows = bank.float()
        after = head(rows[:, :D], rows[:, D:])
        moved = (after - before).norm(dim=1)  # (N,)
        bound = miner._movement(head)
    assert (moved <= bound).all()
    assert (bound < 20 * moved.max()).all()  # and is not vacuous


def test_spectral_norm_matches_svd():
    for shape in ((30, 50), (50, 30), (256, 1024)):
        a = torch.randn(shape, generator=torch.Generator().manual_seed(0)).sign() * 1e-4  # an Adam-like update
        exact = torch.linalg.matrix_norm(a.double(), ord=2).item()
        assert exact <= spectral_norm(a) <= exact * (1 + 1e-2)


def test_bounded_miner_refuses_other_heads_and_approximate_chunks():
    encoder, head, bank = make_problem()
    shard = BankShard(bank, 0, D, 64)
    x, positive_rows = batch_at(0)
    with pytest.raises(ValueError, match="paper-variant"):
        colearn_loss(encoder(x), positive_rows, Head(D, E, H, variant="competition"), shard, CFG,
                     miner=BoundedMiner(shard))
    with pytest.raises(ValueError, match="float32"):
        BoundedMiner(BankShard(bank, 0, D, 64, mining_dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="another bank shard"):
        colearn_loss(encoder(x), positive_rows, head, shard, CFG, miner=BoundedMiner(BankShard(bank, 0, D, 8)))


def _dist():
    from qkcopy.distributed import Dist
    return Dist()
