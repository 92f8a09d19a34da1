"""PR curves: one PNG per call, every labelled evaluation drawn, refusals for bad input."""

import numpy as np
import pytest
from PIL import Image

from qkcopy.data.isc_csv import GroundTruth, Predictions
from qkcopy.evaluation.metrics import isc_metrics
from qkcopy.evaluation.plots import plot_pr_curves


def _metrics(noise):
    rng = np.random.default_rng(0)
    gt = GroundTruth({f"q{i}": (f"r{i}" if i < 10 else None) for i in range(20)})
    q = np.array([f"q{i}" for i in range(20)])
    scores = np.where(np.arange(20) < 10, 1.0, 0.0) + noise * rng.normal(size=20)
    return isc_metrics(Predictions(q, np.array([f"r{i}" for i in range(20)]), scores), gt)


def test_writes_a_png_with_both_curves(tmp_path):
    out = plot_pr_curves({"clean": _metrics(0.1), "noisy": _metrics(2.0)}, tmp_path / "sub" / "pr.png", "t")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (720, 540)
        pixels = np.asarray(img.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # curves, not a blank canvas
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["pr.png"]


def test_nothing_to_plot_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        plot_pr_curves({}, tmp_path / "pr.png")
    assert not (tmp_path / "pr.png").exists()
