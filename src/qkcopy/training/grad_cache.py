"""Gradient caching (GradCache, Gao et al. 2021): a large batch's exact gradient with a sub-batch's memory.

Letters: B batch (this rank's part), C sub-batch (`data.grad_cache_chunk`), E descriptor dim.

A contrastive loss couples every item of the batch, so the batch cannot simply be split into accumulated
sub-batches. It depends on the network only through the (B, E) descriptors, though, so two passes suffice:
1. `embed`: each sub-batch of C items through the encoder WITHOUT grad (no activations kept); the descriptors
   are concatenated into a leaf (B, E) that requires grad. The loss (mining included) is computed on the
   leaves; `backward` first backpropagates it only as far as the leaves, giving dL/d(descriptor) (B, E).
2. `backward` then runs each sub-batch again WITH grad and backpropagates its cached dL/d(descriptor) slice
   into the parameters, one sub-batch at a time: Σ_c J_cᵀ g_c = dL/dθ, the plain gradient of the whole batch.
Peak memory is one sub-batch's activations plus B × E descriptors. Cost: one extra forward (about 1.3× a
plain step). The encoders here keep BatchNorm frozen and have no dropout, so the two passes compute the same
function; the RNG state of each sub-batch is still replayed in pass 2, as GradCache does, so a stochastic layer
would see the same draws.

With `chunk` 0 (the default: the paper had no caching) `embed` is the plain forward with grad and `backward`
is `loss.backward()`: the same arithmetic as before this module existed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# (inputs (c, …) …) -> descriptors (c, E); the encoder of one side, autocast included
Encoder = Callable[..., torch.Tensor]


@dataclass
class _Cached:
    encode: Encoder
    inputs: tuple[torch.Tensor, ...]  # each (B, …)
    leaf: torch.Tensor  # (B, E) float32, requires grad: the loss's input
    rng: list[tuple[torch.Tensor, torch.Tensor | None]]  # (cpu, cuda) RNG state before each sub-batch


class GradCache:
    """One step's cached encodings; make a new one per step. chunk: sub-batch size C, 0 for no caching."""

    def __init__(self, chunk: int, device: torch.device | str = "cpu"):
        if chunk < 0:
            raise ValueError(f"grad cache chunk must be >= 0 (0: off), got {chunk}")
        self.chunk, self.device = chunk, torch.device(device)
        self.cached: list[_Cached] = []

    def embed(self, encode: Encoder, *inputs: torch.Tensor, trained: bool = True) -> torch.Tensor:
        """encode(*inputs) → (B, E) float32: with a path back to the encoder when `trained` (through a cached
        leaf when chunking), detached otherwise (computed in sub-batches of C without grad)."""
        batch = inputs[0].shape[0]
        if any(t.shape[0] != batch for t in inputs):
            raise ValueError(f"inputs must share their first dim B, got {[tuple(t.shape) for t in inputs]}")
        if self.chunk == 0:
            if trained:
                return encode(*inputs).float()
            with torch.no_grad():
                return encode(*inputs).float()
        rng, parts = [], []
        with torch.no_grad():
            for start in range(0, batch, self.chunk):  # pass 1
                rng.append(self._rng_state())
                parts.append(encode(*(t[start:start + self.chunk] for t in inputs)).float())  # (C, E)
        out = torch.cat(parts)  # (B, E) float32
        if not trained:
            return out
        leaf = out.requires_grad_(True)
        self.cached.append(_Cached(encode, inputs, leaf, rng))
        return leaf

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward() into the parameters: directly, or to the cached leaves and then sub-batch by
        sub-batch through the encoders (pass 2)."""
        if loss.ndim != 0:
            raise ValueError(f"expected a scalar loss, got shape {tuple(loss.shape)}")
        loss.backward()
        for item in self.cached:
            if item.leaf.grad is None:  # the loss did not use this encoding
                continue
            batch = item.leaf.shape[0]
            for i, start in enumerate(range(0, batch, self.chunk)):
                with torch.random.fork_rng(devices=self._cuda_devices()):
                    self._set_rng_state(item.rng[i])
                    part = item.encode(*(t[start:start + self.chunk] for t in item.inputs)).float()  # (C, E)
                part.backward(item.leaf.grad[start:start + self.chunk])
        self.cached.clear()

    def _cuda_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _rng_state(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set_rng_state(self, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)
