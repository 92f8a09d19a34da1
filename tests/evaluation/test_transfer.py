"""Threshold trust: the Clopper–Pearson bound, the conservative threshold, each edit family left out in turn."""

import numpy as np
import pytest

from qkcopy.data.isc_csv import GroundTruth, Predictions
from qkcopy.evaluation.threshold import choose_threshold, conservative_threshold, precision_lower_bound
from qkcopy.evaluation.metrics import isc_metrics
from qkcopy.evaluation.transfer import family_transfer, pooled


def _preds(rows):
    q, r, s = zip(*rows)
    return Predictions(np.array(q), np.array(r), np.array(s, dtype=np.float64))


def test_lower_bound_closed_forms_and_order():
    n = np.array([1, 10, 60, 200])
    np.testing.assert_allclose(precision_lower_bound(n, n), 0.05 ** (1 / n))  # all true: (1 − c)^(1/n)
    np.testing.assert_allclose(precision_lower_bound(1, 1, 0.9), 0.1)
    assert precision_lower_bound(0, 5) == 0.0
    b = precision_lower_bound(np.array([9, 90, 900]), np.array([10, 100, 1000]))
    assert (b < 0.9).all() and b[0] < b[1] < b[2]  # below the point estimate, tighter with more pairs


def _ranked(labels, ties=()):
    """One prediction per query, scores descending; query i is a copy iff labels[i]."""
    gt = GroundTruth({f"q{i}": (f"r{i}" if t else None) for i, t in enumerate(labels)})
    scores = [-float(i) for i in range(len(labels))]
    for i in ties:
        scores[i] = scores[i - 1]
    return _preds([(f"q{i}", f"r{i}" if t else "rX", s) for i, (t, s) in enumerate(zip(labels, scores))]), gt


def test_conservative_threshold_is_where_the_bound_reaches_the_target():
    labels = [True] * 60 + ([True] * 4 + [False]) * 10 + [False] * 20
    preds, gt = _ranked(labels)
    m = isc_metrics(preds, gt)
    n = np.arange(1, len(labels) + 1)
    tp = np.cumsum(labels)
    want = int(np.flatnonzero(precision_lower_bound(tp, n) >= 0.9)[-1])
    assert conservative_threshold(m) == -float(want)
    assert conservative_threshold(m) > m.threshold_at_p90  # stricter than the point cut-off
    t = choose_threshold(m, preds, gt, "fp", 1, "b")
    assert t.rule == "lower-bound" and t.precision_lower >= 0.9 and t.score == -float(want)
    point = choose_threshold(m, preds, gt, "fp", 1, "b", rule="point")
    assert point.rule == "point" and point.score == m.threshold_at_p90 and point.precision_lower < 0.9
    with pytest.raises(ValueError, match="calibration rule"):
        choose_threshold(m, preds, gt, "fp", 1, "b", rule="vibes")


def test_conservative_threshold_never_splits_a_tie_and_falls_back_to_point():
    labels = [True] * 40 + [False] * 10
    preds, gt = _ranked(labels, ties=range(1, 41))  # the first 41 predictions share one score
    assert conservative_threshold(isc_metrics(preds, gt)) is None  # 40/41 is one cut: bound 0.89
    few, gt_few = _ranked([True] * 9 + [False])
    t = choose_threshold(isc_metrics(few, gt_few), few, gt_few, "fp", 1, "b")  # 9 pairs never bound 0.9
    assert t.rule == "point" and t.target_met and t.precision == 1.0


def test_family_transfer_calibrates_without_the_family_and_scores_it():
    # family "a": copies score high but so do its non-copies; family "b": clean separation
    rows, gt, fams = [], {}, {}
    for i in range(40):
        q = f"b{i}"
        gt[q] = f"r{q}" if i < 30 else None
        rows.append((q, gt[q] or "rX", -1.0 - i * 0.01 if i < 30 else -5.0 - i * 0.01))
        fams[q] = ["b"]
    for i in range(20):
        q = f"a{i}"
        gt[q] = f"r{q}" if i % 2 == 0 else None
        rows.append((q, gt[q] or "rY", -1.1 - i * 0.01))
        fams[q] = ["a"]
    preds, truth = _preds(rows), GroundTruth(gt)
    out = {f.family: f for f in family_transfer(preds, truth, fams, conservative=False)}
    # threshold from "b" alone: its 30 copies all clear it (score ≥ −1.29); on "a" every query clears it
    assert out["a"].threshold == pytest.approx(-1.29) and out["a"].flagged == 20
    assert out["a"].precision == pytest.approx(0.5) and out["a"].recall == 1.0
    # threshold from "a" alone: point precision 0.9 first reached after its first copy only (score −1.1)
    assert out["b"].threshold == pytest.approx(-1.1) and out["b"].precision == 1.0
    together, worst = pooled(list(out.values()))
    assert worst == 0.5 and together == pytest.approx((10 + out["b"].true) / (20 + out["b"].flagged))
