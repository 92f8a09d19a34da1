"""Export: TorchScript and ONNX files give the PyTorch model's descriptors; the DFT GIST equals torch.fft GIST."""

import json

import numpy as np
import pytest
import torch

from qkcopy.model.export import DftGist, export_models, run_exported, sample_inputs
from qkcopy.model.gist import Gist
from qkcopy.model.trained import load_trained

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dft_gist_matches_fft_gist():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 3, 32, 32, generator=g) * 255).round()
    x[0] = 0.0  # flat black image: the prefilter's local contrast is tiny
    gist = Gist()
    want = gist(x)
    got = DftGist(gist)(x)
    assert got.shape == (3, 960)
    assert (got - want).abs().max().item() < 1e-5


def test_export_parity_torchscript_and_onnx(tiny_run, make_images, tmp_path):
    trained = load_trained(tiny_run)
    check = make_images(tmp_path / "check", 4)
    report = export_models(trained, tmp_path / "exp", check_paths=check)
    assert set(report.max_abs_diff) == {"q.pt", "k.pt", "q.onnx", "k.onnx"}
    assert max(report.max_abs_diff.values()) < 1e-4, report.max_abs_diff
    meta = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert meta["fingerprint"] == trained.fingerprint and meta["image_size"] == 64

    # other images and another batch size (the batch dimension is dynamic)
    pixels, gist_pixels = sample_inputs(make_images(tmp_path / "more", 3, seed=9), 64)
    with torch.no_grad():
        want = {side: getattr(trained, side)(pixels, trained.gist256(gist_pixels)).numpy() for side in "qk"}
    for name in ("q.pt", "q.onnx", "k.pt", "k.onnx"):
        got = run_exported(tmp_path / "exp" / name, pixels, gist_pixels)
        assert got.shape == (3, 256)
        np.testing.assert_allclose(got, want[name[0]], atol=1e-4, err_msg=name)
    assert np.abs(want["q"] - want["k"]).max() > 1e-4  # the two files really are different models


def test_export_refuses_unknown_format(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="export formats must be among"):
        export_models(load_trained(tiny_run), tmp_path / "x", formats=["tflite"])
    assert not (tmp_path / "x").exists()
