import math

import torch

from qkcopy.qk.loss import HardNegativeMiner, LossConfig, qk_loss, squared_distances


def test_squared_distances_match_direct_difference():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 8, generator=g), torch.randn(7, 8, generator=g)
    direct = ((q[:, None, :] - k[None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(squared_distances(q, k), direct, rtol=1e-5, atol=1e-5)


def test_qk_loss_hand_computed():
    cfg = LossConfig(tau=0.5, w_pos=1.0, w_neg=3.0)
    d2_pos = torch.tensor([0.1, 0.3])
    d2_neg = torch.tensor([1.0, 2.0])
    # L_pos = mean(0.1/0.5, 0.3/0.5) = 0.4; L_neg = mean(-log(1-e^-2), -log(1-e^-4))
    l_neg = (-math.log(1 - math.exp(-2)) - math.log(1 - math.exp(-4))) / 2
    parts = qk_loss(d2_pos, d2_neg, cfg)
    assert math.isclose(parts.pos.item(), 0.4, rel_tol=1e-6)
    assert math.isclose(parts.neg.item(), l_neg, rel_tol=1e-6)
    assert math.isclose(parts.total.item(), 0.4 + 3 * l_neg, rel_tol=1e-6)


def test_qk_loss_is_finite_when_a_negative_coincides():
    parts = qk_loss(torch.tensor([0.0]), torch.tensor([0.0]), LossConfig())
    assert torch.isfinite(parts.total)


def _naive_hardest(d2, positive_rows, k):
    pairs = [(d2[b, n].item(), b, n) for b in range(d2.shape[0]) for n in range(d2.shape[1])
             if n != positive_rows[b]]
    return sorted(pairs)[:k]


def test_miner_over_chunks_equals_global_selection_and_excludes_positives():
    g = torch.Generator().manual_seed(1)
    d2 = torch.rand(4, 50, generator=g)
    positive_rows = torch.tensor([3, 17, 40, 49])
    d2[torch.arange(4), positive_rows] = -1.0  # positives are the closest: must still be excluded
    miner = HardNegativeMiner(12, positive_rows)
    for start in range(0, 50, 8):
        miner.update(d2[:, start:start + 8], start)
    values, batch_index, rows = miner.result()
    expected = _naive_hardest(d2, positive_rows.tolist(), 12)
    assert [(b, n) for _, b, n in expected] == list(zip(batch_index.tolist(), rows.tolist()))
    torch.testing.assert_close(values, torch.tensor([v for v, _, _ in expected]))
    assert not any(rows[i] == positive_rows[batch_index[i]] for i in range(len(rows)))
