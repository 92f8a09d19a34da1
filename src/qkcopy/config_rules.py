"""The rules a training config must follow, checked when it is loaded, before any work starts.

`validate(cfg)` (called by `TrainConfig.__post_init__`) raises a `ConfigError` naming the first key whose
value is out of range: τ > 0, batch >= 1, lr > 0, a known optimiser, method and query strength, phases of Q and
K, finite numbers, PCA images >= the descriptor dim … Types are checked earlier, by `config._coerce`.
"""

from __future__ import annotations

import math
from typing import Any

from qkcopy.data.augment import OPS, STRENGTHS
from qkcopy.data.extra_edits import EXTRA_OPS
from qkcopy.data.families import FAMILIES, excluded_ops
from qkcopy.errors import ConfigError

METHODS = ("qk", "simclr", "moco")
OPTIMIZERS = ("adam", "lars")  # training.optim.make_optimizer


def _check(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key {key} must be {rule}, got {value!r}", key)


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def validate(cfg):
    """Range-check every value of a `config.TrainConfig`; a ConfigError names the first bad key."""
    d, loss, o, s, m, b = cfg.data, cfg.loss, cfg.optim, cfg.schedule, cfg.model, cfg.baseline
    _check(cfg.method in METHODS, "method", f"one of {list(METHODS)}", cfg.method)
    _check(cfg.seed >= 0, "seed", ">= 0", cfg.seed)
    _check(cfg.bank_chunk_rows >= 0, "bank_chunk_rows", ">= 0 (0: from free memory)", cfg.bank_chunk_rows)
    _check(cfg.mining in ("full", "bounded"), "mining", "full or bounded", cfg.mining)
    _check(_finite(m.head_scale) and m.head_scale > 0, "model.head_scale", "a finite number > 0", m.head_scale)
    _check(d.batch_size >= 1, "data.batch_size", ">= 1", d.batch_size)
    _check(d.workers >= 0, "data.workers", ">= 0", d.workers)
    _check(d.grad_cache_chunk >= 0, "data.grad_cache_chunk", ">= 0 (0: no gradient caching)", d.grad_cache_chunk)
    _check(d.strength in STRENGTHS, "data.strength", f"one of {list(STRENGTHS)}", d.strength)
    _check(d.synthesis in ("augly", "broad"), "data.synthesis", "augly or broad", d.synthesis)
    known = {**OPS, **EXTRA_OPS} if d.synthesis == "broad" else OPS
    for op, w in d.op_weights.items():
        _check(op in known, f"data.op_weights.{op}", f"an edit op of data.synthesis {d.synthesis} ({', '.join(known)}"
               f"{'' if d.synthesis == 'broad' else '; the others need data.synthesis: broad'})", op)
        _check(_finite(w) and w >= 0, f"data.op_weights.{op}", "a finite number >= 0", w)
    _check(set(d.holdout_families) <= set(FAMILIES), "data.holdout_families", f"families among {list(FAMILIES)}",
           list(d.holdout_families))
    held = excluded_ops(d.holdout_families)
    drawn = [op for op, w in {**known, **d.op_weights}.items() if w > 0 and op not in held]
    _check(bool(drawn), "data.op_weights", "leaving at least one edit op to draw (every query would be the image "
           "itself)", d.op_weights)
    _check(d.max_train_images is None or d.max_train_images >= 1, "data.max_train_images", ">= 1 or null",
           d.max_train_images)
    _check(d.pca_images >= m.descriptor_dim, "data.pca_images",
           f">= model.descriptor_dim ({m.descriptor_dim}): the GIST PCA needs that many training images",
           d.pca_images)
    _check(_finite(loss.tau) and loss.tau > 0, "loss.tau", "a finite number > 0", loss.tau)
    _check(loss.negatives_per_positive >= 1, "loss.negatives_per_positive", ">= 1", loss.negatives_per_positive)
    for key, w in (("loss.w_pos", loss.w_pos), ("loss.w_neg", loss.w_neg)):
        _check(_finite(w) and w >= 0, key, "a finite number >= 0", w)
    _check(loss.w_pos + loss.w_neg > 0, "loss.w_neg", "> 0 when loss.w_pos is 0", loss.w_neg)
    _check(o.name in OPTIMIZERS, "optim.name", f"one of {list(OPTIMIZERS)}", o.name)
    _check(_finite(o.lr) and o.lr > 0, "optim.lr", "a finite number > 0", o.lr)
    _check(_finite(o.final_lr_fraction) and 0 <= o.final_lr_fraction <= 1, "optim.final_lr_fraction",
           "in [0, 1]", o.final_lr_fraction)
    _check(_finite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", "a finite number >= 0",
           o.weight_decay)
    _check(_finite(o.momentum) and 0 <= o.momentum < 1, "optim.momentum", "in [0, 1)", o.momentum)
    _check(bool(s.phases) and all(p in ("Q", "K") for p in s.phases), "schedule.phases",
           "a non-empty list of Q and K", list(s.phases))
    _check(_finite(s.epochs_per_phase) and s.epochs_per_phase > 0, "schedule.epochs_per_phase", "a finite number > 0",
           s.epochs_per_phase)
    _check(s.steps_per_phase is None or s.steps_per_phase >= 1, "schedule.steps_per_phase", ">= 1 or null",
           s.steps_per_phase)
    _check(s.checkpoint_every >= 1, "schedule.checkpoint_every", ">= 1", s.checkpoint_every)
    _check(_finite(b.moco_momentum) and 0 <= b.moco_momentum <= 1, "baseline.moco_momentum", "in [0, 1]",
           b.moco_momentum)
    _check(b.moco_queue >= 1, "baseline.moco_queue", ">= 1", b.moco_queue)
    return cfg
