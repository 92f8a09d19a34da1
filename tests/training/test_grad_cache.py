"""Gradient caching: a batch encoded in sub-batches has the plain batch's loss and gradients.

Tolerances: in float64 the two computations agree to 1e-10 (only the order of sums differs); in float32, the
training dtype, to rtol 1e-5 on the loss and 1e-4 of the largest gradient entry per parameter (a conv over a
sub-batch rounds differently from one over the whole batch).
"""

import contextlib

import pytest
import torch

from qkcopy.config import load_config
from qkcopy.distributed import Dist
from qkcopy.model.descriptor import build_qk_models
from qkcopy.training.grad_cache import GradCache
from qkcopy.training.methods import MoCo, SimCLR

B, S, E = 10, 32, 16  # batch, image side, descriptor dim


class _Run:
    """What a method's step needs of a `training.run.Run`: config, models, device, one-process Dist."""

    def __init__(self, chunk: int, dtype: torch.dtype):
        self.cfg = load_config("cpu", ["model.weights=null", f"model.image_size={S}", "model.hidden=32",
                                       f"model.descriptor_dim={E}", "data.pca_images=16", "loss.tau=0.5",
                                       "loss.negatives_per_positive=3", f"data.grad_cache_chunk={chunk}"])
        self.q, self.k = (m.to(dtype) for m in build_qk_models(self.cfg.model, 0))
        self.device, self.dist = torch.device("cpu"), Dist()

    def autocast(self):
        return contextlib.nullcontext()


def _batch(dtype):
    g = torch.Generator().manual_seed(5)
    pixels = [torch.rand(B, 3, S, S, generator=g, dtype=dtype) for _ in range(2)]  # query, original
    g256 = [torch.randn(B, E, generator=g, dtype=dtype) for _ in range(2)]
    return [pixels[0], None, pixels[1], None], g256  # tensors[1::2] (gist pixels) are not read by the methods


def _step(method_cls, chunk, dtype):
    run = _Run(chunk, dtype)
    method = method_cls()
    method.setup(run)
    if isinstance(method, MoCo):  # a queue with rows in it, and a K that differs from Q
        method.queue.push(torch.randn(7, E, generator=torch.Generator().manual_seed(2)))
        with torch.no_grad():
            for p in run.k.head.parameters():
                p.add_(0.01)
    params = method.trainable(run, "Q")
    tensors, g256 = _batch(dtype)
    result = method.loss(run, "Q", tensors, g256, torch.arange(B), None)
    method.backward(result)
    grads = {i: p.grad.clone() for i, p in enumerate(params) if p.grad is not None}
    return result, grads, len(params)


@pytest.mark.parametrize("method_cls", [SimCLR, MoCo])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cached_batch_has_the_plain_loss_and_gradients(one_thread, method_cls, dtype):
    plain, plain_grads, n = _step(method_cls, 0, dtype)
    cached, cached_grads, _ = _step(method_cls, 3, dtype)  # sub-batches of 3, 3, 3 and 1
    exact = dtype == torch.float64
    torch.testing.assert_close(cached.loss.total, plain.loss.total, rtol=1e-10 if exact else 1e-5, atol=0)
    torch.testing.assert_close(cached.d2_neg, plain.d2_neg, rtol=1e-10 if exact else 1e-5, atol=1e-7)
    assert plain_grads.keys() == cached_grads.keys() and len(plain_grads) > n // 2  # backbone and heads
    for i, want in plain_grads.items():
        scale = want.abs().max().item()
        assert scale > 0, f"parameter {i} has a zero gradient: the test would prove nothing"
        torch.testing.assert_close(cached_grads[i], want, rtol=0, atol=(1e-10 if exact else 1e-4) * scale,
                                   msg=f"parameter {i}")


def test_pass_two_replays_each_sub_batch_random_draws():
    """A stochastic encoder (dropout): the cached gradient equals autograd over the same sub-batches and draws."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 4))
    x = torch.randn(7, 6)

    def loss_of(emb):  # couples the whole batch, as a contrastive loss does
        return torch.cdist(emb, emb).pow(2).mean() + emb.sum(0).pow(2).sum()

    torch.manual_seed(1)
    loss_of(torch.cat([net(x[i:i + 3]) for i in range(0, 7, 3)])).backward()  # the naive reference
    want = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    torch.manual_seed(1)
    cache = GradCache(3)
    emb = cache.embed(net, x)
    assert emb.is_leaf and emb.requires_grad and net[0].weight.grad is None  # pass 1 kept no graph
    cache.backward(loss_of(emb))
    for got, w in zip((p.grad for p in net.parameters()), want):
        torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-6)


def test_untrained_encodings_are_detached_and_not_cached():
    net = torch.nn.Linear(4, 2)
    cache = GradCache(2)
    out = cache.embed(net, torch.randn(5, 4), trained=False)
    assert out.shape == (5, 2) and not out.requires_grad and cache.cached == []
    with pytest.raises(ValueError, match="share their first dim"):
        cache.embed(lambda a, b: a, torch.zeros(3, 1), torch.zeros(2, 1))
    with pytest.raises(ValueError, match=">= 0"):
        GradCache(-1)


def test_simclr_paper_preset_trains_and_resumes_exactly_at_tiny_size(tmp_path, make_images):
    """The preset's own settings (lr and its cosine, grad caching) at tiny sizes, one segment of 2 steps over
    batches of 6 in sub-batches of 4 and 2: a run stopped after one step and resumed ends with the straight
    run's weights."""
    from safetensors.torch import load_file

    from qkcopy.training.loop import train

    images = make_images(tmp_path / "train", 24, size=40, prefix="t")
    tiny = ["model.weights=null", "model.image_size=32", "model.test_size=null", "model.hidden=32",
            "model.descriptor_dim=16", "data.batch_size=6", "data.grad_cache_chunk=4", "data.workers=0",
            "data.pca_images=24", "data.max_train_images=null", "schedule.phases=[Q]", "schedule.steps_per_phase=2",
            "device=cpu"]
    cfg = load_config("simclr-paper", tiny)
    train(cfg, images, tmp_path / "straight")
    train(cfg, images, tmp_path / "stopped", stop_after_steps=1)
    train(cfg, images, tmp_path / "stopped", resume=True)
    log = [line for line in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and '"lr": 0.001,' in log[0] and '"lr": 0.00075,' in log[1]  # cosine from 1e-3 to half
    straight, resumed = (load_file(tmp_path / d / "checkpoints" / "latest" / "weights.safetensors")
                         for d in ("straight", "stopped"))
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)
