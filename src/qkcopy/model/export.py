"""Exporting the Q and K models (GIST and PCA included) to TorchScript and ONNX, with a parity check.

An exported model maps `pixels (B, 3, S, S) float in [0, 1]` and `gist_pixels (B, 3, 32, 32) float 0..255`
to descriptors `(B, E)`, exactly as `model(pixels, gist256(gist_pixels))` does in qkcopy.

TorchScript traces the model as it is (torch.fft included). For ONNX, neither torch exporter translates
GIST's complex FFTs (the TorchScript-based one lacks `aten::fft_fft2`, the dynamo one fails on complex
tensors), so the ONNX graph computes the same GIST with real discrete-Fourier-transform matrices:
FFT2(x) = F·x·F with F = cos − i·sin of 2πjk/P, written as real matmuls (`DftGist`). For 32 × 32 images
(42 × 42 padded) this is cheap and matches torch.fft to about 1e-6 relative.

Letters: B batch, C colour channels (3), K Gabor filters, S side, P padded side, E descriptor dim.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qkcopy.model.gist import GIST_SIZE, DftGist
from qkcopy.model.gist256 import Gist256, unit_gist
from qkcopy.model.descriptor import DescriptorModel
from qkcopy.io import atomic_dir

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
OPSET = 18
INPUTS = ("pixels", "gist_pixels")
OUTPUT = "descriptor"


class ExportedDescriptor(nn.Module):
    """(pixels (B, 3, S, S) in [0, 1], gist_pixels (B, 3, 32, 32) 0..255) → descriptor (B, E)."""

    def __init__(self, model: DescriptorModel, gist256: Gist256, gist: nn.Module | None = None) -> None:
        super().__init__()
        self.model, self.pca = model, gist256.pca
        self.gist = gist if gist is not None else gist256.gist

    def forward(self, pixels: torch.Tensor, gist_pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels, self.pca(unit_gist(self.gist(gist_pixels))))


@dataclass(frozen=True)
class ExportReport:
    out: Path
    files: dict[str, str]  # "q.onnx" → file name, …
    max_abs_diff: dict[str, float]  # per exported file, against the PyTorch model on the sample inputs
    fingerprint: str
    image_size: int


def sample_inputs(paths: Sequence[Path], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two model inputs for `paths`, prepared exactly as qkcopy's embedding does."""
    from qkcopy.data.transforms import image_pair
    from qkcopy.data.images import load_image
    pairs = [image_pair(load_image(p), image_size) for p in paths]
    return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


def _random_inputs(image_size: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(n, 3, image_size, image_size, generator=g)
    smooth = nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=GIST_SIZE, mode="bilinear")
    return pixels, (smooth * 255.0).round()


def _export_onnx(module: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], path: Path) -> None:
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
        torch.onnx.export(module, inputs, str(path), input_names=list(INPUTS), output_names=[OUTPUT],
                          dynamic_axes={INPUTS[0]: batch, INPUTS[1]: batch, OUTPUT: batch},
                          opset_version=OPSET, dynamo=False)


def _export_torchscript(module: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
        traced = torch.jit.trace(module, inputs, check_trace=False)
        torch.jit.save(traced, str(path))


def run_exported(path: Path, pixels: torch.Tensor, gist_pixels: torch.Tensor) -> np.ndarray:
    """Descriptors (B, E) float32 from an exported file (.onnx with onnxruntime, .pt with torch.jit.load)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT], {INPUTS[0]: pixels.numpy(), INPUTS[1]: gist_pixels.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(pixels, gist_pixels).numpy()


def export_models(trained, out: str | Path, formats: Sequence[str] = FORMATS,
                  check_paths: Sequence[Path] = ()) -> ExportReport:
    """Write q/k in each format into `out` (atomically, as a whole folder) with `export.json`.

    `trained` is a `qkcopy.model.trained.TrainedModels`. The parity check runs every exported file on `check_paths`
    (or on generated inputs when none are given) and records the max abs difference to PyTorch.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"export formats must be among {FORMATS}, got {list(formats)}")
    out, size = Path(out), trained.input_size
    inputs = sample_inputs(check_paths, size) if check_paths else _random_inputs(size)
    files, diffs = {}, {}
    with atomic_dir(out) as tmp:
        for side in ("q", "k"):
            model = getattr(trained, side).cpu().eval()
            reference_module = ExportedDescriptor(model, trained.gist256.cpu()).eval()
            with torch.no_grad():
                expected = reference_module(*inputs).numpy()  # (B, E)
            for fmt in formats:
                name = f"{side}.onnx" if fmt == "onnx" else f"{side}.pt"
                if fmt == "onnx":
                    dft = ExportedDescriptor(model, trained.gist256.cpu(), DftGist(trained.gist256.gist)).eval()
                    _export_onnx(dft, inputs, tmp / name)
                else:
                    _export_torchscript(reference_module, inputs, tmp / name)
                diffs[name] = float(np.abs(run_exported(tmp / name, *inputs) - expected).max())
                files[f"{side}.{fmt}"] = name
                log.info("exported %s: max |Δ| = %.2e against PyTorch on %d samples", name, diffs[name],
                         len(expected))
        report = ExportReport(out, files, diffs, trained.fingerprint, size)
        meta = dict(asdict(report), opset=OPSET, inputs={
            INPUTS[0]: f"(B, 3, {size}, {size}) float32 in [0, 1]: the whole image resized to {size}x{size} "
                       "(bilinear, no crop)",
            INPUTS[1]: f"(B, 3, {GIST_SIZE}, {GIST_SIZE}) float32 0..255: short side resized to {GIST_SIZE} "
                       "(bilinear), centre crop"},
            outputs={OUTPUT: f"(B, {trained.cfg.model.descriptor_dim}) float32"},
            score="-squared L2 distance between a query's Q descriptor and a reference's K descriptor")
        del meta["out"]
        (tmp / "export.json").write_text(json.dumps(meta, indent=1) + "\n")
    return ExportReport(out, files, diffs, trained.fingerprint, size)
