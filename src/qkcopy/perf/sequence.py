"""A run of training steps for `qkcopy bench`: the QK step with the exact bounded miner against SimCLR-style.

Letters: B batch, N bank rows, S input size in pixels, E descriptor dim.

The bounded miner's cost depends on the steps before it (how far the frozen head has moved since its last
full pass), so one step timed in isolation says little. Here `steps` QK steps (`colearn_loss` with a
`BoundedMiner`, Adam on the trained model and the frozen side's head, lr 1e-4 as in the paper) alternate with
`steps` SimCLR-style steps on copies of the models, each step on a fresh random batch (pixels, gist256,
positive rows). Means over the run are reported (a full pass is a slow step among fast ones: a median would
hide it), the first step's cold-cache full pass included.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from qkcopy.device import autocast
from qkcopy.perf.steps import Parts
from qkcopy.qk.loss import LossConfig
from qkcopy.qk.mining import BoundedMiner
from qkcopy.qk.step import colearn_loss
from qkcopy.training.methods import simclr_loss


def _batches(parts: Parts, steps: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`steps` batches (pixels (B, 3, S, S), gist256 (B, E), positive rows (B,)) like the bench's own."""
    g = torch.Generator().manual_seed(seed)
    n, device = len(parts.bank), parts.pixels.device
    return [(torch.rand(parts.pixels.shape, generator=g).to(device),
             torch.randn(parts.g256.shape, generator=g).to(device),
             torch.randperm(n, generator=g)[:len(parts.index)].to(device)) for _ in range(steps)]


def bounded_sequence(parts: Parts, device: torch.device, steps: int, seed: int = 1,
                     cfg: LossConfig = LossConfig()) -> dict:
    """Seconds and rows evaluated per step of the bounded QK step, and seconds of the SimCLR-style step; on
    every step, untimed, the full pass on the same weights is run too and the steps where both chose the same
    negatives are counted (`equal_to_full_pass`: all of them, on any device and kernel)."""
    if steps < 1:
        raise ValueError(f"the step sequence needs at least 1 step, got {steps}")
    q, k = parts.q, parts.k
    sq, sk = copy.deepcopy(q), copy.deepcopy(k)  # SimCLR's own models: its updates must not move K's head
    qk_opt = torch.optim.Adam([*q.parameters(), *k.head.parameters()], lr=1e-4)
    simclr_opt = torch.optim.Adam([*sq.parameters(), *sk.parameters()], lr=1e-4)
    shard = parts.bank.shard(0, 1, parts.chunk_rows, device)
    miner = BoundedMiner(shard)

    def qk_step(pixels, g256, index):
        with autocast(device):
            desc = q(pixels, g256)  # (B, E)
        result = colearn_loss(desc.float(), index, k.head, shard, cfg, miner=miner)
        t0 = time.perf_counter()  # untimed: the full pass on the same weights must choose the same negatives
        with torch.no_grad():
            full = colearn_loss(desc.detach().float(), index, k.head, shard, cfg)
        same.append(bool(torch.equal(full.negatives, result.negatives)))
        checking.append(time.perf_counter() - t0)
        qk_opt.zero_grad(set_to_none=True)
        result.loss.total.backward()
        qk_opt.step()

    def simclr_step(pixels, g256, index):
        with autocast(device):
            queries, keys = sq(pixels, g256), sk(pixels.flip(3), g256)  # (B, E) each
        result = simclr_loss(queries.float(), keys.float(), cfg)
        simclr_opt.zero_grad(set_to_none=True)
        result.loss.total.backward()
        simclr_opt.step()

    times: dict[str, list[float]] = {"qk": [], "simclr": []}
    same: list[bool] = []
    checking: list[float] = []
    for batch in _batches(parts, steps, seed):
        for name, fn in (("qk", qk_step), ("simclr", simclr_step)):
            t0 = time.perf_counter()
            fn(*batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - t0 - (checking.pop() if name == "qk" else 0.0))
    fractions = [h.evaluated / h.rows for h in miner.history]
    return dict(steps=steps, qk_bounded_step_s=statistics.fmean(times["qk"]),
                simclr_step_s=statistics.fmean(times["simclr"]),
                qk_bounded_over_simclr=sum(times["qk"]) / sum(times["simclr"]),
                full_passes=sum(h.full for h in miner.history), equal_to_full_pass=sum(same),
                mean_fraction_evaluated=statistics.fmean(fractions),
                cache_bytes=sum(t.numel() * t.element_size() for t in (miner.cache, miner.cache_norm,
                                                                      miner.input_norm, miner.hidden_norm,
                                                                      miner.rounding)),
                qk_bounded_times=times["qk"], simclr_times=times["simclr"], fractions_evaluated=fractions)
