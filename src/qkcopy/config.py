"""Training configuration: frozen dataclasses whose defaults are the paper's values, YAML presets, overrides.

`load_config("cpu", ["loss.tau=0.05", "schedule.phases=[Q,K]"])` reads the preset `configs/cpu.yaml` (or a
YAML file path), applies `key=value` overrides (values parsed as YAML), and returns a `TrainConfig`. Unknown
keys are errors. Derived values (steps of a phase, the learning rate at a step) come from functions, never
written back into the config.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qkcopy.qk.loss import LossConfig
from qkcopy.model.descriptor import ModelConfig

PRESET_DIR = Path(__file__).parent / "configs"
METHODS = ("qk", "simclr", "moco")


@dataclass(frozen=True)
class DataConfig:
    batch_size: int = 32
    workers: int = 2  # DataLoader processes decoding and editing images
    strength: str = "medium"  # query synthesis strength: light, medium, hard
    max_train_images: int | None = None  # use only the first N training images (None: all)
    pca_images: int = 5000  # training images used to fit the GIST PCA


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # adam or lars
    lr: float = 1e-4
    final_lr_fraction: float = 0.5  # α: cosine decay from lr to α·lr over a phase
    weight_decay: float = 0.0
    momentum: float = 0.9  # lars only


@dataclass(frozen=True)
class ScheduleConfig:
    phases: tuple[str, ...] = ("Q", "K", "Q", "K", "Q")  # QK Iteration: Q1, K1, Q2, K2, Q3
    epochs_per_phase: float = 1.0
    steps_per_phase: int | None = None  # when set, overrides epochs_per_phase
    full_freeze: bool = False  # paper's cheaper variant: the frozen side's head is frozen too
    checkpoint_every: int = 500  # steps; a checkpoint is also written at every phase end


@dataclass(frozen=True)
class BaselineConfig:
    moco_momentum: float = 0.999
    moco_queue: int = 4096


@dataclass(frozen=True)
class TrainConfig:
    method: str = "qk"
    seed: int = 0
    device: str = "auto"  # auto: cuda when available, else cpu
    amp: bool = True  # bf16 autocast on GPU; CPU runs in float32
    bank_chunk_rows: int = 0  # 0: from free memory (distributed.auto_chunk_rows)
    tensorboard: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        bad = [p for p in self.schedule.phases if p not in ("Q", "K")]
        if bad or not self.schedule.phases:
            raise ValueError(f"schedule.phases must be a non-empty list of Q and K, got {self.schedule.phases}")


def to_dict(cfg) -> dict[str, Any]:
    """Plain YAML/JSON-ready nested dict (tuples become lists)."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(dataclasses.asdict(cfg))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """YAML reads `3e-5` as a string and `1` as an int: numbers for float fields, a clear error otherwise."""
    allowed = typing.get_args(hint) or (hint,)
    if float in allowed and not isinstance(value, bool) and isinstance(value, (int, str)):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"config key {key} must be a number, got {value!r}") from None
    if int in allowed and float not in allowed and not isinstance(value, int) and value is not None:
        raise ValueError(f"config key {key} must be an integer, got {value!r}")
    return value


def _build(cls, values: dict[str, Any], where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; known: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ValueError(f"config key {where}{name} must be a mapping, got {value!r}")
            value = _build(hint, value, f"{where}{name}.")
        elif isinstance(value, list):
            value = tuple(value)
        else:
            value = _coerce(value, hint, where + name)
        kwargs[name] = value
    return cls(**kwargs)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def preset_names() -> list[str]:
    """The presets shipped in configs/ (src/qkcopy/configs/*.yaml): names `load_config` accepts."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(preset: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """A preset name (file in configs/) or YAML path, then `key.sub=value` overrides."""
    tree: dict[str, Any] = {}
    if preset is not None:
        path = Path(preset)
        if not path.suffix:
            path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"config {preset!r} not found (presets: {preset_names()}, or give a YAML file)")
        tree = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        _set(tree, key.strip(), yaml.safe_load(raw))
    return _build(TrainConfig, tree, "")


def phase_steps(schedule: ScheduleConfig, n_train: int, batch_size: int) -> int:
    """Optimizer steps in one phase."""
    if schedule.steps_per_phase is not None:
        return schedule.steps_per_phase
    return max(1, math.ceil(schedule.epochs_per_phase * n_train / batch_size))


def lr_at(step: int, total: int, optim: OptimConfig) -> float:
    """Cosine decay from lr at step 0 to final_lr_fraction·lr at step `total` (paper: α = 0.5 over one epoch)."""
    progress = min(step / max(total, 1), 1.0)
    alpha = optim.final_lr_fraction
    return optim.lr * (alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * progress)))
