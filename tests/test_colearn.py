"""The chunked QK step equals a naive full-autograd implementation over the whole bank."""

import torch
from torch import nn

from qkcopy.colearn import colearn_loss, in_batch_loss
from qkcopy.loss import LossConfig, qk_loss
from tiny_head import D, E, G, TinyHead


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

    chunks = [(s, bank[s:s + 8].float()) for s in range(0, len(bank), 8)]
    result = colearn_loss(encoder(x), positive_rows, head, chunks, lambda i: bank[i].float(), D, cfg)
    result.loss.total.backward()
    torch.testing.assert_close(result.loss.total, naive, rtol=1e-5, atol=1e-6)
    for got, want in zip(_grads(encoder, head), naive_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in _grads(head))  # the frozen side's head is trained too


def test_step_rejects_misshaped_positive_rows():
    cfg = LossConfig()
    encoder, head, x, bank, positive_rows = _setup()
    try:
        colearn_loss(encoder(x), positive_rows[:2], head, [], lambda i: bank[i].float(), D, cfg)
    except ValueError as err:
        assert "positive_rows" in str(err)
    else:
        raise AssertionError("expected ValueError")


def test_in_batch_loss_uses_only_batch_keys():
    cfg = LossConfig(negatives_per_positive=2)
    torch.manual_seed(3)
    q, k = torch.randn(4, E, requires_grad=True), torch.randn(4, E)
    result = in_batch_loss(q, k, cfg)
    d2 = ((q[:, None] - k[None]) ** 2).sum(-1).detach()
    off = d2.clone()
    off.fill_diagonal_(float("inf"))
    want_neg = torch.sort(off.reshape(-1)).values[:8]
    torch.testing.assert_close(result.d2_neg, want_neg, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.d2_pos, d2.diagonal(), rtol=1e-5, atol=1e-6)
