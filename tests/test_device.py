"""The one device resolver and the one autocast policy; the seeds every run derives."""

import pytest
import torch

from qkcopy.device import autocast, resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:1")


def test_autocast_is_float32_on_the_cpu():
    x = torch.randn(4, 4)
    with autocast("cpu"):
        assert (x @ x).dtype == torch.float32
    with autocast(torch.device("cpu"), enabled=False):
        assert (x @ x).dtype == torch.float32


@pytest.mark.gpu
def test_autocast_is_bf16_on_cuda():
    x = torch.randn(4, 4, device="cuda")
    with autocast("cuda"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast("cuda", enabled=False):
        assert (x @ x).dtype == torch.float32


