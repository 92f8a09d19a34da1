"""Where tensors run and in which precision: the one device resolver and the one autocast policy.

Policy: the backbone runs under bf16 autocast on CUDA (when the config's `amp` allows it) and in float32 on
the CPU; bank rows are stored fp16; distances, losses, GIST and PCA always run in float32.
"""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" → cuda when available, else cpu; anything else is passed to torch.device ("cpu", "cuda:1")."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA device is available; use --device cpu")
    return device


def autocast(device: torch.device | str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast for the backbone on CUDA when `enabled`; a no-op elsewhere (CPU runs float32)."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
