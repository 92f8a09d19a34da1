"""Training configuration: frozen dataclasses whose defaults are the paper's values, YAML presets, overrides.

`load_config("cpu", ["loss.tau=0.05", "schedule.phases=[Q,K]"])` reads the preset `configs/cpu.yaml` (or a
YAML file path), applies `key=value` overrides (values parsed as YAML), and returns a `TrainConfig`. Unknown
keys are errors. Derived values (steps of a phase, the learning rate at a step) come from functions, never
written back into the config.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qkcopy.config_rules import validate
from qkcopy.errors import ConfigError, one_line

PRESET_DIR = Path(__file__).parent / "configs"


VARIANTS = ("paper", "competition")  # model.variant: the paper's head, or with the refine FFN
HEAD_INITS = ("random", "pca")  # model.head_init: see qkcopy.model.descriptor


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"  # "imagenet", a state-dict path, or None for random init
    image_size: int = 224
    hidden: int = 1024
    descriptor_dim: int = 256
    head_scale: float = 0.01
    variant: str = "paper"
    feature_norm: bool = False  # L2-normalise the backbone feature at the head's input
    head_init: str = "random"  # "random" (the paper) or "pca" (see the module doc)
    head_init_weight: float = 3.0  # "pca": RMS norm of the backbone part / RMS norm of gist256
    test_size: int | None = None  # input side at inference (embed, index, search, eval, serve); None: image_size
    # Query regions at inference (eval, search, serve, match): the defaults of --regions, --region-size and
    # --region-margin. N regions proposed in each query, described by Q beside the whole query at region_size
    # px (None: input_size); a pair scores its best region, region_margin added to a region's squared distance.
    regions: int = 0
    region_size: int | None = None
    region_margin: float = 0.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"model variant {self.variant!r} is not one of {VARIANTS}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"model head_init {self.head_init!r} is not one of {HEAD_INITS}")
        if self.head_init == "pca" and (self.hidden < 2 * self.descriptor_dim or self.head_init_weight <= 0):
            raise ValueError(f"head_init pca needs hidden >= 2 x descriptor_dim ({2 * self.descriptor_dim}) and "
                             f"head_init_weight > 0, got hidden {self.hidden}, weight {self.head_init_weight}")
        for name in ("image_size", "hidden", "descriptor_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model {name} must be positive, got {getattr(self, name)}")
        for name in ("test_size", "region_size"):
            if getattr(self, name) is not None and getattr(self, name) < 32:
                raise ValueError(f"model {name} must be at least 32 pixels (or null), got {getattr(self, name)}")
        if not 0 <= self.regions <= 16:
            raise ValueError(f"model regions must be in 0..16, got {self.regions}")
        if not (math.isfinite(self.region_margin) and self.region_margin >= 0):
            raise ValueError(f"model region_margin must be a finite number >= 0, got {self.region_margin}")

    @property
    def input_size(self) -> int:
        """The side images are resized to for descriptors at inference: test_size, else the training size.
        A network trained on small inputs often describes better from larger ones (docs/RESULTS.md)."""
        return self.test_size or self.image_size


@dataclass(frozen=True)
class LossConfig:
    tau: float = 0.07
    negatives_per_positive: int = 10  # M
    w_pos: float = 1.0
    w_neg: float = 3.0


@dataclass(frozen=True)
class DataConfig:
    batch_size: int = 32
    workers: int = 2  # DataLoader processes decoding and editing images
    strength: str = "medium"  # query synthesis strength: light, medium, hard
    max_train_images: int | None = None  # use only the first N training images (None: all)
    pca_images: int = 5000  # training images used to fit the GIST PCA
    holdout_families: tuple[str, ...] = ()  # edit families training never uses (qkcopy.data.families)
    synthesis: str = "augly"  # query edits: augly (AugLy's ops) or broad (also qkcopy.data.extra_edits)
    op_weights: dict[str, float] = field(default_factory=dict)  # op -> sampling weight (0: never), {pixelization: 3}
    grad_cache_chunk: int = 0  # > 0: encode the batch in sub-batches of this many (training.grad_cache); 0: off


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
    mining: str = "full"  # QK hard negatives: "full" (head over every bank row) or "bounded" (exact, qk.mining)
    tensorboard: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)

    def __post_init__(self):
        validate(self)


def to_dict(cfg) -> dict[str, Any]:
    """Plain YAML/JSON-ready nested dict (tuples become lists)."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(dataclasses.asdict(cfg))


def _kind(allowed: tuple) -> str:
    names = {bool: "true or false", float: "a number", int: "an integer", str: "text"}
    return " or ".join(names.get(t, getattr(t, "__name__", str(t))) for t in allowed if t is not type(None))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """The value as its field's type, or a ConfigError naming the key. YAML reads `3e-5` as a string and `1`
    as an int: float fields take both; ints, booleans, text and lists must be given as such."""
    if typing.get_origin(hint) is dict:
        if isinstance(value, dict) and all(isinstance(k, str) and type(v) in (int, float) for k, v in value.items()):
            return {k: float(v) for k, v in value.items()}
        raise ConfigError(f"config key {key} must be a mapping of names to numbers, e.g. {{a: 2}}, got {value!r}", key)
    if typing.get_origin(hint) is tuple:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"config key {key} must be a list such as [Q, K], got {value!r}", key)
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"config key {key} must be {_kind(allowed)}, got null", key)
    if bool in allowed:
        if isinstance(value, bool):
            return value
    elif float in allowed and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"config key {key} must be a number, got {value!r}", key) from None
    elif int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif str in allowed and isinstance(value, str):
        return value
    raise ConfigError(f"config key {key} must be {_kind(allowed)}, got {value!r}", key)


def _build(cls, values: dict[str, Any], where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; known: {sorted(names)}",
                          where + unknown[0])
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where}{name} must be a mapping, got {value!r}", where + name)
            value = _build(hint, value, f"{where}{name}.")
        else:
            value = _coerce(value, hint, where + name)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:  # a section's own check (ModelConfig …)
        raise ConfigError(f"config section {where.rstrip('.') or 'top level'}: {err}", where.rstrip(".")) from None


def differing_keys(a: TrainConfig, b: TrainConfig) -> list[str]:
    """The dotted keys whose values differ between two configs, e.g. ["loss.tau", "optim.lr"]."""
    def flat(tree: dict, where: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flat(value, f"{where}{key}.") if isinstance(value, dict) else {where + key: value})
        return out
    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for i, key in enumerate(parents):
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            where = ".".join(parents[:i + 1])
            raise ConfigError(f"override {dotted}: config key {where} is a value, not a section", where)
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
        tree = _read_yaml(path)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value", item)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_reason(err)})", key) from None
        _set(tree, key.strip(), value)
    return _build(TrainConfig, tree, "")


def _yaml_reason(err: Exception) -> str:
    mark = getattr(err, "problem_mark", None)
    if mark is None:
        return one_line(err)
    return f"{getattr(err, 'problem', None) or 'YAML error'} at line {mark.line + 1}, column {mark.column + 1}"


def _read_yaml(path: Path) -> dict[str, Any]:
    """A config file's mapping, or a ConfigError naming the file (and the line, for a YAML error)."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: damaged config file ({_yaml_reason(err)}); restore it or give another config",
                          path) from None
    tree = {} if tree is None else tree
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of keys, got {type(tree).__name__}", path)
    return tree


def segment_names(cfg: TrainConfig) -> list[str]:
    """Q1, K1, Q2, … — the phase names, also used as evaluation points for the comparison methods."""
    phases = cfg.schedule.phases
    return [f"{side}{phases[:i + 1].count(side)}" for i, side in enumerate(phases)]


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
