"""How far a copy threshold can be trusted away from the benchmark it was calibrated on.

A threshold picked where precision first reaches 0.9 on one benchmark is tuned to that benchmark's copies: on
a few hundred pairs its precision is itself uncertain, and copies made with other edits score differently.
Three measures, all from the calibration's own predictions or one more benchmark:

* **Confidence bound.** `qkcopy.evaluation.threshold.conservative_threshold`: the lowest score at which the
  one-sided Clopper–Pearson lower bound (95 %) of precision is still at the target, the threshold `qkcopy eval`
  saves by default (`--calibration point` keeps the plain cut-off).
* **Leave one edit family out** (`family_transfer`, benchmarks built by `qkcopy make-benchmark`): for each edit
  family f, the threshold is calibrated on the queries without f and applied to the queries with f — the
  precision a user can expect on a kind of edit the calibration never saw, measured, pooled over families.
* **Another benchmark** (`qkcopy eval --heldout-benchmark`): the threshold applied to a second benchmark, e.g.
  one made with `make-benchmark --heldout all` (edits by other code than training's), as the model sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np


from qkcopy.data.isc_csv import GroundTruth, Predictions
from qkcopy.evaluation.metrics import isc_metrics, precision_recall_at_threshold
from qkcopy.evaluation.threshold import conservative_threshold, point_threshold

@dataclass(frozen=True)
class FamilyTransfer:
    family: str
    threshold: float | None  # calibrated without the family's queries; None when the rest never reach it
    precision: float  # on the family's queries at that threshold
    recall: float
    flagged: int
    true: int


def _subset(preds: Predictions, gt: GroundTruth, queries: set[str]) -> tuple[Predictions, GroundTruth]:
    keep = np.array([q in queries for q in preds.query_ids], dtype=bool)
    sub_gt = GroundTruth({q: r for q, r in gt.matches.items() if q in queries})
    return Predictions(preds.query_ids[keep], preds.reference_ids[keep], preds.scores[keep]), sub_gt


def family_transfer(preds: Predictions, gt: GroundTruth, families: Mapping[str, Sequence[str]],
                    conservative: bool = True) -> list[FamilyTransfer]:
    """For each family with copies: threshold from the other queries, precision on this family's queries."""
    out = []
    queries = set(families)
    with quiet_metrics():  # not one "µAP …" line per family
        for family in sorted({f for fs in families.values() for f in fs}):
            out.extend(_left_out(preds, gt, families, queries, family, conservative))
    return out


@contextmanager
def quiet_metrics():
    """`evaluate` without its INFO line, for the many small evaluations of per-family figures."""
    logger = logging.getLogger("qkcopy.evaluation.metrics")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _left_out(preds, gt, families, queries, family, conservative) -> list[FamilyTransfer]:
    """[the transfer to `family`], or [] when it or the other queries hold no copy."""
    inside = {q for q in queries if family in families[q]}
    fam_preds, fam_gt = _subset(preds, gt, inside)
    rest_preds, rest_gt = _subset(preds, gt, queries - inside)
    if fam_gt.n_positives == 0 or rest_gt.n_positives == 0:
        return []
    rest = isc_metrics(rest_preds, rest_gt)
    score = conservative_threshold(rest) if conservative else point_threshold(rest)
    if score is None:
        return [FamilyTransfer(family, None, 0.0, 0.0, 0, 0)]
    precision, recall, flagged = precision_recall_at_threshold(fam_preds, fam_gt, score)
    return [FamilyTransfer(family, score, precision, recall, flagged, round(precision * flagged))]


def pooled(rows: Sequence[FamilyTransfer]) -> tuple[float, float]:
    """Precision over every family's flagged pairs together, and the worst family's precision."""
    flagged = sum(r.flagged for r in rows)
    used = [r.precision for r in rows if r.flagged]
    return (sum(r.true for r in rows) / flagged if flagged else 0.0), (min(used) if used else 0.0)
