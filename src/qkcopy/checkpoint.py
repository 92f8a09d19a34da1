"""Checkpoints: safetensors for tensors, JSON for the rest; atomic; loaded without executing pickle.

A checkpoint is a directory holding `weights.safetensors` (model state dicts under prefixes such as `q.` and
`k.`), `optimizer.safetensors` (the optimizer's per-parameter tensors) and `state.json` (step, phase,
optimizer hyper-parameters, config). It is written into a temporary sibling and swapped in by rename, so the
previous checkpoint stays intact until the new one is complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from qkcopy.io import atomic_dir


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


def read_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / "state.json").is_file() or not (path / "weights.safetensors").is_file():
        raise FileNotFoundError(f"{path} is not a qkcopy checkpoint (needs state.json and weights.safetensors)")
    return json.loads((path / "state.json").read_text())


def load_weights(path: str | Path, models: dict[str, torch.nn.Module]) -> None:
    """Load each model from its prefix, strictly: a missing or unexpected key is an error naming it."""
    weights = load_file(Path(path) / "weights.safetensors")
    for name, model in models.items():
        prefix = f"{name}."
        sub = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        if not sub:
            raise ValueError(f"checkpoint {path} has no weights for model {name!r}")
        missing, unexpected = model.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint {path}, model {name!r}: missing keys {missing[:5]}, "
                             f"unexpected keys {unexpected[:5]}")


def load_extra(path: str | Path) -> dict[str, torch.Tensor]:
    weights = load_file(Path(path) / "weights.safetensors")
    return {k[len("extra."):]: v for k, v in weights.items() if k.startswith("extra.")}


def load_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    meta = read_state(path)["optimizer"]
    tensors = load_file(Path(path) / "optimizer.safetensors")
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
