import json

import numpy as np
import pytest

from qkcopy.data.isc_csv import GroundTruth, Predictions
from qkcopy.evaluation.metrics import isc_metrics, precision_recall_at_threshold


def preds(*rows) -> Predictions:
    q, r, s = zip(*rows) if rows else ((), (), ())
    return Predictions(np.array(q, dtype=str), np.array(r, dtype=str), np.array(s, dtype=np.float64))


# ---- hand-computed cases -------------------------------------------------------------------------------------

def test_micro_ap_with_distractor_and_never_retrieved_match():
    gt = GroundTruth({"q1": "r1", "q2": "r2", "q3": "r3", "q4": None})  # 3 positives, q4 has no copy
    p = preds(("q2", "r2", 0.7), ("q4", "r1", 0.6), ("q1", "r1", 0.9), ("q2", "rX", 0.8))
    m = isc_metrics(p, gt)
    # sorted: q1r1 T(0.9), q2rX F(0.8), q2r2 T(0.7), q4r1 F(0.6); q3's match is never predicted.
    # precision 1, 1/2, 2/3, 2/4; recall 1/3, 1/3, 2/3, 2/3 (never above 2/3)
    # µAP = 1/3·1 + 0·1/2 + 1/3·2/3 + 0·1/2 = 1/3 + 2/9 = 5/9 = 0.5556
    assert m.micro_ap == pytest.approx(5 / 9)
    np.testing.assert_allclose(m.precision, [1, 1 / 2, 2 / 3, 2 / 4])
    np.testing.assert_allclose(m.recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(m.thresholds, [0.9, 0.8, 0.7, 0.6])
    # precision >= 0.9 only after the first prediction: recall 1/3 at threshold 0.9
    assert m.recall_at_p90 == pytest.approx(1 / 3)
    assert m.threshold_at_p90 == 0.9
    # R@1: q1 hit; q2's true r2 (0.7) is beaten by rX (0.8); q3 never retrieved → 1/3. R@10: q1, q2 → 2/3
    assert m.recall_at_1 == pytest.approx(1 / 3)
    assert m.recall_at_10 == pytest.approx(2 / 3)
    assert (m.n_predictions, m.n_positives) == (4, 3)


def test_ties_are_ordered_worst_case():
    gt = GroundTruth({"q1": "r1", "q2": "r2"})
    rows = [("q1", "r1", 0.5), ("q2", "r2", 0.5), ("q1", "r9", 0.5)]
    # all scores tie, so the negative goes first: F, T, T
    # precision 0, 1/2, 2/3; recall 0, 1/2, 1 → µAP = 1/2·1/2 + 1/2·2/3 = 1/4 + 1/3 = 7/12 = 0.5833
    # (the best-case order T, T, F would give 1.0)
    for perm in ([0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1]):
        m = isc_metrics(preds(*[rows[i] for i in perm]), gt)
        assert m.micro_ap == pytest.approx(7 / 12)
        # q1's r1 ties with r9, so it is not counted at rank 1; q2 is → 1/2
        assert m.recall_at_1 == pytest.approx(1 / 2)
        assert m.recall_at_10 == pytest.approx(1.0)
        np.testing.assert_allclose(m.precision, [0, 1 / 2, 2 / 3])


def test_constant_scores_do_not_help():
    gt = GroundTruth({"q1": "r1", "q2": None})
    m = isc_metrics(preds(("q1", "r1", 1.0), ("q1", "r2", 1.0), ("q2", "r1", 1.0), ("q2", "r3", 1.0)), gt)
    # worst case F, F, F, T: precision at the one positive = 1/4 → µAP = 1·1/4 = 0.25
    assert m.micro_ap == pytest.approx(0.25)
    assert m.recall_at_p90 == 0.0 and m.threshold_at_p90 is None


def test_p90_never_reached_is_zero():
    gt = GroundTruth({"q1": "r1"})
    m = isc_metrics(preds(("q1", "r9", 0.9), ("q1", "r1", 0.8)), gt)
    # F then T: precision 0, 1/2; recall 0, 1 → µAP = 1·1/2 = 0.5, P90 never reached
    assert m.micro_ap == pytest.approx(0.5)
    assert m.recall_at_p90 == 0.0
    assert m.threshold_at_p90 is None
    assert m.recall_at_1 == 0.0 and m.recall_at_10 == 1.0


def test_recall_at_p90_takes_the_highest_recall_with_enough_precision():
    gt = GroundTruth({f"q{i}": f"r{i}" for i in range(11)} | {"d1": None, "d2": None})  # 11 positives
    rows = [(f"q{i}", f"r{i}", 1.0 - 0.01 * i) for i in range(9)]  # 9 T, scores 1.00 … 0.92
    rows += [("d1", "r0", 0.91), ("q9", "r9", 0.90), ("d2", "r1", 0.50)]  # F, T, F
    m = isc_metrics(preds(*rows), gt)
    # cut-offs: 9 T → p 1, r 9/11; +F → p 9/10 = 0.9 (counts), r 9/11; +T → p 10/11 ≈ 0.909, r 10/11;
    # +F → p 10/12 ≈ 0.833 < 0.9. Highest valid recall = 10/11 at threshold 0.90. q10 never retrieved.
    assert m.recall_at_p90 == pytest.approx(10 / 11)
    assert m.threshold_at_p90 == pytest.approx(0.90)
    # µAP = (1/11)·(1+1+…+1 [9 times]) + (1/11)·(10/11) = 9/11 + 10/121 = 109/121 = 0.9008
    assert m.micro_ap == pytest.approx(109 / 121)
    # the calibrated threshold keeps exactly those 11 predictions
    assert precision_recall_at_threshold(preds(*rows), gt, m.threshold_at_p90) == pytest.approx((10 / 11, 10 / 11, 11))


def test_precision_recall_at_threshold():
    gt = GroundTruth({"q1": "r1", "q2": "r2", "q3": None})
    p = preds(("q1", "r1", 3.0), ("q2", "r5", 2.0), ("q2", "r2", 1.0), ("q3", "r1", 0.5))
    assert precision_recall_at_threshold(p, gt, 2.0) == pytest.approx((1 / 2, 1 / 2, 2))  # keeps >= 2.0
    assert precision_recall_at_threshold(p, gt, 0.0) == pytest.approx((2 / 4, 2 / 2, 4))
    assert precision_recall_at_threshold(p, gt, 9.0) == (0.0, 0.0, 0)


def test_empty_predictions_score_zero():
    m = isc_metrics(preds(), GroundTruth({"q1": "r1"}))
    assert (m.micro_ap, m.recall_at_p90, m.threshold_at_p90, m.recall_at_1) == (0.0, 0.0, None, 0.0)


def test_as_dict_is_json_friendly():
    m = isc_metrics(preds(("q1", "r1", 0.9)), GroundTruth({"q1": "r1"}))
    d = json.loads(json.dumps(m.as_dict()))
    assert d["micro_ap"] == 1.0 and d["threshold_at_p90"] == 0.9 and d["n_positives"] == 1
    assert "precision" not in d


# ---- errors -------------------------------------------------------------------------------------------------

def test_duplicate_pairs_raise():
    gt = GroundTruth({"q1": "r1"})
    with pytest.raises(ValueError, match=r"duplicate .*\(q1, r1\)"):
        isc_metrics(preds(("q1", "r1", 0.9), ("q1", "r2", 0.5), ("q1", "r1", 0.1)), gt)


def test_unknown_query_raises_with_example():
    with pytest.raises(ValueError, match="not in the ground truth, e.g. q7"):
        isc_metrics(preds(("q1", "r1", 0.9), ("q7", "r1", 0.5)), GroundTruth({"q1": "r1"}))


def test_ground_truth_without_positives_raises():
    with pytest.raises(ValueError, match="no matched query"):
        isc_metrics(preds(("q1", "r1", 0.9)), GroundTruth({"q1": None}))




# ---- CSV ----------------------------------------------------------------------------------------------------









# ---- against a slow reference ---------------------------------------------------------------------------------

def slow_reference(rows, gt: dict):
    """µAP, R@P90, R@1 by a plain loop over the predictions sorted worst case."""
    n_pos = sum(r is not None for r in gt.values())
    labelled = [(s, gt[q] == r) for q, r, s in rows]
    labelled.sort(key=lambda x: (-x[0], x[1]))  # score descending, negatives (False) first among ties
    tp, ap, prev_recall, best_recall = 0, 0.0, 0.0, 0.0
    for i, (_, is_true) in enumerate(labelled, start=1):
        tp += is_true
        precision, recall = tp / i, tp / n_pos
        ap += (recall - prev_recall) * precision
        prev_recall = recall
        if precision >= 0.9:
            best_recall = max(best_recall, recall)
    hits = 0
    for q, ref in gt.items():
        mine = [(r, s) for qq, r, s in rows if qq == q]
        true_scores = [s for r, s in mine if r == ref]
        if ref is not None and true_scores:
            hits += sum(1 for r, s in mine if s >= true_scores[0]) == 1  # only itself scores >= its score
    return ap, best_recall, hits / n_pos


@pytest.mark.parametrize("seed", range(6))
def test_evaluate_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    n_q, n_r = 40, 25
    gt = {f"q{i}": (f"r{rng.integers(n_r)}" if rng.random() < 0.5 else None) for i in range(n_q)}
    if all(v is None for v in gt.values()):
        gt["q0"] = "r0"
    rows = []
    for i in range(n_q):
        refs = {f"r{r}" for r in rng.choice(n_r, size=rng.integers(0, 6), replace=False)}
        if gt[f"q{i}"] is not None and rng.random() < 0.7:
            refs.add(gt[f"q{i}"])  # most matches are retrieved, some never are
        for r in sorted(refs):
            score = float(rng.integers(0, 8))  # few distinct values: many ties
            if gt[f"q{i}"] == r:
                score += float(rng.integers(0, 5))  # true pairs tend to score higher
            rows.append((f"q{i}", r, score))
    ap, r_p90, r_1 = slow_reference(rows, gt)
    m = isc_metrics(preds(*rows), GroundTruth(gt))
    assert m.micro_ap == pytest.approx(ap, abs=1e-12)
    assert m.recall_at_p90 == pytest.approx(r_p90, abs=1e-12)
    assert m.recall_at_1 == pytest.approx(r_1, abs=1e-12)
    assert 0 < ap < 1 and 0 < r_p90 < 1  # the case is not degenerate
