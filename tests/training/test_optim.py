"""LARS against the update written out by hand; the optimiser factory and the learning-rate setter."""

import pytest
import torch

from qkcopy.config import OptimConfig
from qkcopy.training.optim import LARS, make_optimizer, set_lr


def test_lars_two_steps_match_the_formula():
    torch.manual_seed(0)
    w, b = torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)
    w0, b0 = w.detach().clone(), b.detach().clone()
    opt = LARS([w, b], lr=0.1, momentum=0.9, weight_decay=0.01, eta=0.001)
    grads = [(torch.randn(4, 3), torch.randn(3)) for _ in range(2)]
    buf_w = buf_b = None
    for gw, gb in grads:
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        # by hand: weight decay and trust ratio for the matrix only, then momentum, then the step
        d = gw + 0.01 * w0
        d = d * (0.001 * w0.norm() / d.norm())
        buf_w = d if buf_w is None else 0.9 * buf_w + d
        buf_b = gb if buf_b is None else 0.9 * buf_b + gb
        w0, b0 = w0 - 0.1 * buf_w, b0 - 0.1 * buf_b
        torch.testing.assert_close(w.detach(), w0)
        torch.testing.assert_close(b.detach(), b0)


def test_lars_skips_parameters_without_grad_and_zero_weights():
    p, q = torch.zeros(2, 2, requires_grad=True), torch.ones(2, requires_grad=True)
    p.grad = torch.ones(2, 2)
    LARS([p, q], lr=1.0, momentum=0.0).step()
    assert torch.equal(p.detach(), -torch.ones(2, 2))  # ‖w‖ = 0: trust ratio 1, a plain SGD step
    assert torch.equal(q.detach(), torch.ones(2))  # no grad: untouched


def test_factory_and_lr_setter():
    params = [torch.nn.Parameter(torch.zeros(3))]
    adam = make_optimizer(params, OptimConfig(name="adam", lr=1e-3, weight_decay=0.1))
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["weight_decay"] == 0.1
    assert isinstance(make_optimizer(params, OptimConfig(name="lars")), LARS)
    set_lr(adam, 5e-5)
    assert adam.param_groups[0]["lr"] == 5e-5
    with pytest.raises(ValueError, match="adam or lars"):
        make_optimizer(params, OptimConfig(name="sgd"))
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer([], OptimConfig())
