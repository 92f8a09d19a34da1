"""The chunked QK step equals a naive full-autograd implementation over the whole bank."""

import torch
from tiny_head import D, E, G, TinyHead
from torch import nn

from qkcopy.qk.bank import BankShard
from qkcopy.qk.loss import LossConfig, qk_loss
from qkcopy.qk.step import colearn_loss


def _setup(seed=0, n=37, b=5):
    torch.manual_seed(seed)
    encoder, head = nn.Linear(9, E), TinyHead()
    x = torch.randn(b, 9)
    bank = torch.randn(n, D + G).half()  # the fp16 bank
    positive_rows = torch.randperm(n)[:b]
    return encoder, head, x, bank, positive_rows


def _naive(encoder, head, x, bank, positive_rows, cfg):
    q = encoder(x)
    rows = bank.float()
    k = head(rows[:, :D], rows[:, D:])  # whole bank with grad
    d2 = ((q[:, None, :] - k[None, :, :]) ** 2).sum(-1)  # (B, N)
    masked = d2.detach().clone()
    masked[torch.arange(len(x)), positive_rows] = float("inf")
    _, flat = torch.topk(masked.reshape(-1), len(x) * cfg.negatives_per_positive, largest=False)
    neg = d2.reshape(-1)[flat]
    return qk_loss(d2[torch.arange(len(x)), positive_rows], neg, cfg).total


def _grads(*modules):
    return [p.grad.clone() for m in modules for p in m.parameters()]


def test_chunked_step_equals_naive_full_autograd():
    cfg = LossConfig(tau=0.5, negatives_per_positive=3)
    encoder, head, x, bank, positive_rows = _setup()
    naive = _naive(encoder, head, x, bank, positive_rows, cfg)
    naive.backward()
    naive_grads = _grads(encoder, head)
    encoder.zero_grad(), head.zero_grad()

    result = colearn_loss(encoder(x), positive_rows, head, BankShard(bank, 0, D, 8), cfg)
    result.loss.total.backward()
    torch.testing.assert_close(result.loss.total, naive, rtol=1e-5, atol=1e-6)
    for got, want in zip(_grads(encoder, head), naive_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in _grads(head))  # the frozen side's head is trained too


def test_step_rejects_misshaped_positive_rows():
    cfg = LossConfig()
    encoder, head, x, bank, positive_rows = _setup()
    try:
        colearn_loss(encoder(x), positive_rows[:2], head, BankShard(bank, 0, D, 8), cfg)
    except ValueError as err:
        assert "positive_rows" in str(err)
    else:
        raise AssertionError("expected ValueError")
