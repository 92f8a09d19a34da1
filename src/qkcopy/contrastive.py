"""The paper's comparisons in the same harness: SimCLR-style and MoCo-style steps.

Letters: B batch, L queue length, E descriptor dim.

Both use the QK loss and the same hard-negative mining (B·M hardest over the batch); only where negatives
come from differs:
- SimCLR-style: Q on the queries and K on the originals, both trained end to end; negatives are the batch's
  own keys (B − 1 per query).
- MoCo-style: Q trained; K is a momentum (EMA) copy of Q, no grad; negatives are the batch's keys plus a
  FIFO queue of the last L keys.
"""

from __future__ import annotations

import torch

from qkcopy.colearn import StepResult, in_batch_loss
from qkcopy.loss import LossConfig


def simclr_loss(queries: torch.Tensor, keys: torch.Tensor, cfg: LossConfig) -> StepResult:
    """queries, keys: (B, E) with grad; key b is query b's positive."""
    return in_batch_loss(queries, keys, cfg)


class KeyQueue:
    """FIFO of the last `length` key descriptors (L, E), detached, float32."""

    def __init__(self, length: int, dim: int, device: torch.device | str = "cpu"):
        self.keys = torch.empty(0, dim, device=device)
        self.length = length

    def push(self, keys: torch.Tensor) -> None:
        self.keys = torch.cat([keys.detach().float(), self.keys])[:self.length]


def moco_loss(queries: torch.Tensor, keys: torch.Tensor, queue: KeyQueue, cfg: LossConfig) -> StepResult:
    """queries (B, E) with grad; keys (B, E) from the momentum encoder (no grad); negatives batch + queue."""
    result = in_batch_loss(queries, torch.cat([keys.detach().float(), queue.keys]), cfg)
    queue.push(keys)
    return result


@torch.no_grad()
def momentum_update(target: torch.nn.Module, source: torch.nn.Module, momentum: float) -> None:
    """target ← m·target + (1 − m)·source, parameters only (BatchNorm stats are frozen in both)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
