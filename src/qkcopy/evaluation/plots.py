"""Precision–recall curves of one or several evaluations in one PNG, µAP in the legend.

The curve is the one µAP integrates: precision and recall after each prediction of the pooled,
score-sorted list (qkcopy.metrics.evaluate), so the area under a step plot of it is the µAP shown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; never opens a window
import matplotlib.pyplot as plt  # noqa: E402

from qkcopy.evaluation.metrics import TARGET_PRECISION, Metrics  # noqa: E402
from qkcopy.io import atomic_write

log = logging.getLogger(__name__)


def plot_pr_curves(curves: Mapping[str, Metrics], path: str | Path, title: str | None = None) -> Path:
    """Draw each labelled evaluation's PR curve into one PNG at `path` (written atomically)."""
    if not curves:
        raise ValueError("plot_pr_curves needs at least one {label: Metrics} entry")
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.0, 4.5), dpi=120)
    try:
        for label, m in curves.items():
            if m.recall.shape != m.precision.shape or m.recall.ndim != 1:
                raise ValueError(f"{label}: precision and recall must be (P,) arrays of equal length, "
                                 f"got {m.precision.shape} and {m.recall.shape}")
            start = m.precision[:1]  # the curve begins at recall 0 with the first prediction's precision
            ax.step(np.r_[0.0, m.recall], np.r_[start, m.precision], where="post",
                    label=f"{label}  µAP {m.micro_ap:.3f}, R@P90 {m.recall_at_p90:.3f}")
        ax.axhline(TARGET_PRECISION, color="0.6", linewidth=0.8, linestyle="--")
        ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.02), xlabel="recall", ylabel="precision",
               title=title or "precision–recall (pooled predictions)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    log.info("wrote PR curves of %s to %s", ", ".join(curves), path)
    return path
