"""What is trained and how a step's loss is made, one small strategy object per method: QK, SimCLR, MoCo.

Letters: W world size, b this rank's batch, B = Σ b the global batch, L MoCo queue length, E descriptor dim.

All three use the QK loss (`qkcopy.qk.loss`) and the same global hard-negative mining (B·M hardest over the
batch); they differ in where negatives come from and what is trained:
- QK Co-learn (the paper): one side's backbone frozen and its bank passed in full every step
  (`qkcopy.qk.step.colearn_loss`); the trained side's model and the frozen side's head are trained.
- SimCLR-style: Q on the queries and K on the originals, both trained end to end; negatives are the global
  batch's own keys (B − 1 per query).
- MoCo-style: Q trained; K is a momentum (EMA) copy of Q, no grad; negatives are the global batch's keys plus
  a FIFO queue of the last L keys.
Every method runs under torchrun (`sharded`): each rank encodes its b items and the descriptors are
all-gathered, differentiably where they carry grad, so every rank computes the same loss of the global batch;
the backward of an all-gather sums the W identical gradients onto the owning rank, and
`Dist.all_reduce_mean_grads` after backward leaves exactly the single-process gradient (as `qk.step` does).
Every method encodes through a `GradCache` (`data.grad_cache_chunk`): with a chunk, a batch of any size costs
one sub-batch's activations, with the same loss and gradients (`training.grad_cache`).
To add a method: subclass `Method`, register it in `METHODS`, add its name to `training.config.METHODS`.
"""

from __future__ import annotations

import json
from functools import partial

import torch

from qkcopy.qk.mining import BoundedMiner
from qkcopy.qk.loss import HardNegativeMiner, LossConfig, squared_distances
from qkcopy.qk.step import StepResult, colearn_loss, pair_loss
from qkcopy.training.grad_cache import Encoder, GradCache


def in_batch_loss(queries: torch.Tensor, keys: torch.Tensor, cfg: LossConfig) -> StepResult:
    """The QK loss with negatives only among `keys` (K, E); key b is query b's positive.

    keys may hold more rows than queries (a MoCo queue appended after the batch's own keys).
    """
    batch = queries.shape[0]
    if keys.ndim != 2 or keys.shape[0] < batch:
        raise ValueError(f"expected keys (≥{batch}, E), got {tuple(keys.shape)}")
    positive_rows = torch.arange(batch, device=queries.device)
    miner = HardNegativeMiner(batch * cfg.negatives_per_positive, positive_rows)
    with torch.no_grad():
        miner.update(squared_distances(queries.detach(), keys.detach()), 0)  # (B, K) float32
    _, neg_batch, neg_rows = miner.result()
    return pair_loss(queries, keys[:batch], neg_batch, keys[neg_rows], cfg)


def simclr_loss(queries: torch.Tensor, keys: torch.Tensor, cfg: LossConfig) -> StepResult:
    """queries, keys: (B, E) with grad; key b is query b's positive."""
    return in_batch_loss(queries, keys, cfg)


class KeyQueue:
    """FIFO of the last `length` key descriptors (L, E), detached, float32, newest first."""

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


def encoder(run, model: torch.nn.Module) -> Encoder:
    """(pixels (c, 3, S, S), g256 (c, G)) → descriptors (c, E) float32, the backbone under the run's autocast."""
    def encode(pixels: torch.Tensor, g256: torch.Tensor) -> torch.Tensor:
        with run.autocast():
            return model(pixels, g256).float()
    return encode


@torch.no_grad()
def momentum_update(target: torch.nn.Module, source: torch.nn.Module, momentum: float) -> None:
    """target ← m·target + (1 − m)·source, parameters only (BatchNorm stats are frozen in both)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


class Method:
    """A training method as the loop sees it. `run` is a `qkcopy.training.run.Run`; side is "Q" or "K"."""

    name = ""
    uses_bank = False  # a bank of the frozen side is built for every segment
    pairs = True  # batch items carry (query, original); False: one image per item
    sharded = False  # may run under torchrun with W > 1
    cache: GradCache | None = None  # this step's encodings (`loss` makes it, `backward` uses it)

    def setup(self, run) -> None:
        """Once per run, after the models are built (and before a resume loads weights)."""

    def queries(self, side: str) -> bool:
        """Whether the batch items of a segment are synthetic queries (else the original images)."""
        return True

    def trainable(self, run, side: str) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def loss(self, run, side: str, tensors: list[torch.Tensor], g256: list[torch.Tensor], index: torch.Tensor,
             bank) -> StepResult:
        raise NotImplementedError

    def new_cache(self, run) -> GradCache:
        """A fresh `GradCache` for this step's encodings (chunk `data.grad_cache_chunk`; 0: plain autograd)."""
        self.cache = GradCache(run.cfg.data.grad_cache_chunk, run.device)
        return self.cache

    def backward(self, result: StepResult) -> None:
        """Backpropagate the step's loss into the trainable parameters (GradCache's pass 2 when chunking)."""
        (self.cache or GradCache(0)).backward(result.loss.total)
        self.cache = None

    def after_step(self, run) -> None:
        """After each optimizer step."""

    def extra_state(self) -> dict[str, torch.Tensor] | None:
        """Tensors of the method's own state saved with the run's latest checkpoint (MoCo's queue), or None."""
        return None

    def load_extra_state(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        """Restore what `extra_state` saved, on resume."""


class QKColearn(Method):
    name, uses_bank, pairs, sharded = "qk", True, False, True
    miner: BoundedMiner | None = None

    def queries(self, side: str) -> bool:
        return side == "Q"  # a K phase trains K on the originals against the bank of queries

    def trainable(self, run, side):
        trained, frozen = (run.q, run.k) if side == "Q" else (run.k, run.q)
        trained.unfreeze_backbone()
        trained.head.requires_grad_(True)  # after a full-freeze phase of the other side
        frozen.freeze_backbone()
        frozen.head.requires_grad_(not run.cfg.schedule.full_freeze)
        return [p for m in (trained, frozen) for p in m.parameters() if p.requires_grad]

    def loss(self, run, side, tensors, g256, index, bank):
        trained, frozen = (run.q, run.k) if side == "Q" else (run.k, run.q)
        desc = self.new_cache(run).embed(encoder(run, trained), tensors[0], g256[0])  # (b, E) float32
        return colearn_loss(desc, index, frozen.head, bank, run.cfg.loss, run.dist, miner=self._miner(run, bank))

    def _miner(self, run, bank) -> BoundedMiner | None:
        """config mining=bounded: one exact bounded miner per phase (a new bank shard starts a new one)."""
        if run.cfg.mining != "bounded":
            return None
        if self.miner is None or self.miner.shard is not bank:
            self.miner = BoundedMiner(bank)
        return self.miner

    def after_step(self, run) -> None:
        """With the bounded miner: one line per step in mining_log.jsonl (bank rows evaluated, of how many, and
        whether it was a full pass; miner_step counts from this process's first step of the phase)."""
        if self.miner is not None and run.is_main:
            last = self.miner.history[-1]
            record = dict(miner_step=len(self.miner.history) - 1, evaluated=last.evaluated, rows=last.rows,
                          full=last.full)
            with open(run.dir / "mining_log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")


class SimCLR(Method):
    name, sharded = "simclr", True

    def trainable(self, run, side):
        for model in (run.q, run.k):
            model.unfreeze_backbone()
        return [p for m in (run.q, run.k) for p in m.parameters() if p.requires_grad]

    def loss(self, run, side, tensors, g256, index, bank):
        cache = self.new_cache(run)
        queries = cache.embed(encoder(run, run.q), tensors[0], g256[0])  # (b, E) float32
        keys = cache.embed(encoder(run, run.k), tensors[2], g256[1])  # (b, E) float32
        gather = partial(run.dist.all_gather_cat, differentiable=True)
        return simclr_loss(gather(queries), gather(keys), run.cfg.loss)  # on (B, E) each: the global batch


class MoCo(Method):
    name, sharded = "moco", True

    def setup(self, run) -> None:
        run.k.load_state_dict(run.q.state_dict())  # the momentum encoder starts as a copy of Q
        self.queue = KeyQueue(run.cfg.baseline.moco_queue, run.cfg.model.descriptor_dim, run.device)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"moco_queue": self.queue.keys}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        self.queue.keys = tensors["moco_queue"].to(device)

    def trainable(self, run, side):
        run.q.unfreeze_backbone()
        run.k.freeze_backbone()
        run.k.head.requires_grad_(False)
        return [p for p in run.q.parameters() if p.requires_grad]

    def loss(self, run, side, tensors, g256, index, bank):
        cache = self.new_cache(run)
        queries = cache.embed(encoder(run, run.q), tensors[0], g256[0])  # (b, E) float32
        keys = cache.embed(encoder(run, run.k), tensors[2], g256[1], trained=False)  # (b, E) momentum encoder
        queries = run.dist.all_gather_cat(queries, differentiable=True)  # (B, E)
        keys = run.dist.all_gather_cat(keys)  # (B, E): every rank pushes the same global keys to its queue
        return moco_loss(queries, keys, self.queue, run.cfg.loss)

    def after_step(self, run) -> None:
        momentum_update(run.k, run.q, run.cfg.baseline.moco_momentum)


METHODS: dict[str, type[Method]] = {m.name: m for m in (QKColearn, SimCLR, MoCo)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]()
