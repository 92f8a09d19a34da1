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


def test_key_queue_is_a_fifo_of_the_newest_keys():
    queue = KeyQueue(length=5, dim=E)
    batches = [torch.full((2, E), float(i)) for i in range(4)]
    for keys in batches:
        queue.push(keys)
    assert queue.keys.shape == (5, E)
    assert queue.keys[:, 0].tolist() == [3.0, 3.0, 2.0, 2.0, 1.0]  # newest first, oldest dropped


def test_moco_loss_uses_batch_and_queue_then_pushes_the_batch():
    cfg = LossConfig(negatives_per_positive=2)
    torch.manual_seed(1)
    q, k = torch.randn(3, E, requires_grad=True), torch.randn(3, E)
    queue = KeyQueue(length=8, dim=E)
    queue.push(torch.randn(4, E))
    held = queue.keys.clone()
    got = moco_loss(q, k, queue, cfg)
    want = in_batch_loss(q, torch.cat([k, held]), cfg)
    torch.testing.assert_close(got.loss.total, want.loss.total)
    assert torch.equal(queue.keys[:3], k) and torch.equal(queue.keys[3:7], held)


def test_momentum_update_is_an_ema_of_parameters():
    torch.manual_seed(2)
    target, source = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    want = [0.9 * t.detach() + 0.1 * s.detach() for t, s in zip(target.parameters(), source.parameters())]
    momentum_update(target, source, 0.9)
    for got, w in zip(target.parameters(), want):
        torch.testing.assert_close(got.detach(), w)


class _Run:
    """What a method needs of a run to choose its trainable parameters."""

    def __init__(self, full_freeze=False):
        from qkcopy.config import load_config
        from qkcopy.model.descriptor import ModelConfig, build_qk_models

        self.cfg = load_config("cpu", [f"schedule.full_freeze={str(full_freeze).lower()}"])
        self.q, self.k = build_qk_models(ModelConfig(weights=None, image_size=32, hidden=32, descriptor_dim=16), 0)


def _ids(params):
    return {id(p) for p in params}


@pytest.mark.parametrize("full_freeze", [False, True])
def test_qk_trains_one_side_and_the_other_head(full_freeze):
    run = _Run(full_freeze)
    method = QKColearn()
    for side, trained, frozen in (("Q", run.q, run.k), ("K", run.k, run.q), ("Q", run.q, run.k)):
        params = _ids(method.trainable(run, side))
        assert _ids(p for p in trained.parameters() if p.requires_grad) <= params
        assert any(id(p) in params for p in trained.head.parameters())  # the trained side's head, always
        assert not any(id(p) in params for p in frozen.backbone.parameters())
        assert any(id(p) in params for p in frozen.head.parameters()) == (not full_freeze)
    assert method.queries("Q") and not method.queries("K") and method.uses_bank and not method.pairs


def test_simclr_trains_both_models_and_moco_only_q():
    run = _Run()
    simclr = _ids(SimCLR().trainable(run, "Q"))
    assert any(id(p) in simclr for p in run.k.backbone.parameters())
    moco = _ids(MoCo().trainable(run, "K"))
    assert moco and not any(id(p) in moco for p in run.k.parameters())


def test_methods_are_looked_up_by_config_name():
    assert sorted(METHODS) == ["moco", "qk", "simclr"]
    assert isinstance(get_method("qk"), QKColearn)
    with pytest.raises(ValueError, match="unknown method 'byol'"):
        get_method("byol")
