"""The comparison methods' losses, the MoCo queue and momentum update, and what each method trains."""

import pytest
import torch

from qkcopy.qk.loss import LossConfig
from qkcopy.training.methods import (METHODS, KeyQueue, MoCo, QKColearn, SimCLR, get_method, in_batch_loss,
                                     moco_loss, momentum_update)
from tiny_head import E


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
