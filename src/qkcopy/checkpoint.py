"""Checkpoints: safetensors for tensors, JSON for the rest; atomic; loaded without executing pickle.

A checkpoint is a directory holding `weights.safetensors` (model state dicts under prefixes such as `q.` and
`k.`), `optimizer.safetensors` (the optimizer's per-parameter tensors) and `state.json` (step, phase,
optimizer hyper-parameters, config). It is written into a temporary sibling and swapped in by rename, so the
previous checkpoint stays intact until the new one is complete. A kill at any instant of that swap is undone
by `recover` (the trainer calls it before resuming); readers use `readable`, which never renames anything.
A damaged or truncated file is a `CheckpointError` naming it, never a safetensors or JSON traceback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from qkcopy.errors import CheckpointError, read_json
from qkcopy.io import atomic_dir, recover_dir


def _flatten(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().contiguous().cpu() for k, v in state.items()}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, slots in sd["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(path: str | Path, models: dict[str, torch.nn.Module], state: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None,
                    extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write models (and optimizer, and extra tensors such as a MoCo queue) atomically into directory `path`."""
    path = Path(path)
    weights = {}
    for name, model in models.items():
        weights.update(_flatten(f"{name}.", model.state_dict()))
    weights.update(_flatten("extra.", extra or {}))
    state = dict(state)
    with atomic_dir(path) as tmp:
        save_file(weights, tmp / "weights.safetensors")
        if optimizer is not None:
            tensors, meta = _optimizer_tensors(optimizer)
            save_file(tensors, tmp / "optimizer.safetensors")
            state["optimizer"] = meta
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
    return path


def recover(path: str | Path) -> None:
    """Undo a kill inside `save_checkpoint`'s swap: the previous checkpoint back when `path` is missing, and
    the leftovers of the swap (`.NAME.tmp-*` being written, `.NAME.old-*` being deleted) removed."""
    path = Path(path)
    recover_dir(path)
    for prefix in (f".{path.name}.tmp-", f".{path.name}.old-"):
        for leftover in path.parent.glob(prefix + "*") if path.parent.is_dir() else ():
            shutil.rmtree(leftover, ignore_errors=True)


def readable(path: str | Path) -> Path:
    """`path`, or, when a kill inside the swap left it missing, the previous checkpoint it was replacing."""
    path = Path(path)
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime) \
        if not path.exists() and path.parent.is_dir() else []
    return olds[-1] if olds else path


def _load(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: {file.parent} is not a complete qkcopy checkpoint", file)
    try:
        return load_file(file)
    except Exception as err:  # safetensors raises its own SafetensorError on truncated or foreign files
        raise CheckpointError(f"{file}: damaged checkpoint file ({type(err).__name__}: {err}); use another "
                              "checkpoint of the run (checkpoints/Q1, K1 …) or train again", file) from None


def read_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / "state.json").is_file() or not (path / "weights.safetensors").is_file():
        raise CheckpointError(f"{path} is not a qkcopy checkpoint (needs state.json and weights.safetensors)",
                              path)
    state = read_json(path / "state.json", CheckpointError, "checkpoint state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / 'state.json'}: damaged checkpoint state (not a JSON object)", path)
    return state


def load_weights(path: str | Path, models: dict[str, torch.nn.Module]) -> None:
    """Load each model from its prefix, strictly: a missing or unexpected key is an error naming it."""
    weights = _load(Path(path) / "weights.safetensors")
    for name, model in models.items():
        prefix = f"{name}."
        sub = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        if not sub:
            raise CheckpointError(f"checkpoint {path} has no weights for model {name!r}", path)
        missing, unexpected = model.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {path}, model {name!r}: missing keys {missing[:5]}, "
                                  f"unexpected keys {unexpected[:5]}; was it made with another model config?", path)


def load_extra(path: str | Path) -> dict[str, torch.Tensor]:
    weights = _load(Path(path) / "weights.safetensors")
    return {k[len("extra."):]: v for k, v in weights.items() if k.startswith("extra.")}


def load_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    meta = read_state(path).get("optimizer")
    if not isinstance(meta, dict) or not {"scalars", "param_groups"} <= meta.keys():
        raise CheckpointError(f"{Path(path) / 'state.json'} holds no optimizer state; this checkpoint cannot be "
                              "resumed", path)
    tensors = _load(Path(path) / "optimizer.safetensors")
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
