"""Calibration: threshold at precision 0.9, background score normalisation, the end-to-end `calibrate`."""

import json

import numpy as np
import pytest

from qkcopy.data.benchmark import load_benchmark
from qkcopy.evaluation.calibrate import background_sqdist, calibrate, normalize_scores
from qkcopy.evaluation.threshold import Threshold, choose_threshold, load_threshold, save_threshold
from qkcopy.data.isc_csv import GroundTruth, Predictions
from qkcopy.evaluation.metrics import isc_metrics, precision_recall_at_threshold
from qkcopy.model.trained import load_trained


pytestmark = pytest.mark.usefixtures("one_thread")


def _preds(rows):
    q, r, s = zip(*rows)
    return Predictions(np.array(q), np.array(r), np.array(s, dtype=np.float64))


def test_threshold_reaches_precision_090_with_the_highest_recall():
    # 10 queries, each with one true pair; scores ranked so that 9 of the top 10 are true, then noise
    gt = GroundTruth({f"q{i}": f"r{i}" for i in range(10)} | {"q10": None, "q11": None})
    rows = [(f"q{i}", f"r{i}", 10.0 - i) for i in range(9)]  # 9 true at scores 10..2
    rows += [("q10", "r0", 1.5), ("q9", "r9", 1.0), ("q11", "r1", 0.5), ("q9", "r3", 0.2)]
    preds = _preds(rows)
    m = isc_metrics(preds, gt)
    t = choose_threshold(m, preds, gt, "fp", 10, "bench")
    # cut after the 11th prediction (score 1.0): 10 true of 11 → precision 0.909, recall 1.0
    assert t.score == 1.0 and t.target_met
    assert t.precision == pytest.approx(10 / 11) and t.recall == pytest.approx(1.0)
    precision, recall, kept = precision_recall_at_threshold(preds, gt, t.score)
    assert precision >= 0.9 and kept == 11


def test_unreachable_precision_saves_best_precision_flagged():
    gt = GroundTruth({"q0": "r0", "q1": "r1", "q2": None})
    preds = _preds([("q2", "r0", 5.0), ("q0", "r0", 4.0), ("q2", "r1", 3.0), ("q1", "r1", 2.0)])
    m = isc_metrics(preds, gt)
    assert m.threshold_at_p90 is None
    t = choose_threshold(m, preds, gt, "fp", 10, "bench")
    # precisions along the list: 0, 1/2, 1/3, 2/4 → best 0.5, and among those the higher recall (score 2.0)
    assert not t.target_met and t.score == 2.0
    assert t.precision == pytest.approx(0.5) and t.recall == pytest.approx(1.0)


def test_threshold_file_round_trip_and_refusals(tmp_path):
    t = Threshold(-1.25, 0.95, 0.5, 0.9, True, "fp1", 10, "bench")
    save_threshold(t, tmp_path / "threshold.json")
    assert load_threshold(tmp_path / "threshold.json", "fp1") == t
    assert load_threshold(str(tmp_path), "fp1") == t  # the folder holding it
    assert load_threshold("-3.5") == -3.5
    with pytest.raises(ValueError, match="calibrated for model fp1, not fp2"):
        load_threshold(tmp_path / "threshold.json", "fp2")
    with pytest.raises(FileNotFoundError, match="neither a number nor a threshold.json"):
        load_threshold(tmp_path / "nothing.json")


def test_background_sqdist_is_the_nth_nearest_distance():
    rng = np.random.default_rng(0)
    q, bg = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    got = background_sqdist(q, bg, n=3)
    for i in range(5):  # naive reference: sort every distance
        d2 = sorted(float(((q[i] - b) ** 2).sum()) for b in bg)
        assert got[i] == pytest.approx(d2[2], rel=1e-5)
    assert background_sqdist(q, bg[:2], n=10) == pytest.approx(  # n clipped to the background size
        [max(((q[i] - b) ** 2).sum() for b in bg[:2]) for i in range(5)], rel=1e-5)
    with pytest.raises(ValueError, match="E = 8"):
        background_sqdist(q, bg[:, :4], n=3)


def test_normalize_scores_adds_beta_times_background_distance():
    preds = _preds([("a", "r0", -1.0), ("b", "r0", -2.0), ("a", "r1", -3.0)])
    out = normalize_scores(preds, ["a", "b"], np.array([0.5, 4.0], np.float32), beta=2.0)
    np.testing.assert_allclose(out.scores, [-1.0 + 1.0, -2.0 + 8.0, -3.0 + 1.0])
    assert out.query_ids.tolist() == ["a", "b", "a"]
    with pytest.raises(ValueError, match="no background distance, e.g. b"):
        normalize_scores(preds, ["a"], np.array([0.5], np.float32), beta=2.0)


def test_calibrate_end_to_end(tiny_run, tiny_benchmark, tmp_path):
    trained = load_trained(tiny_run)
    bench = load_benchmark(tiny_benchmark)
    cal = calibrate(trained, bench, tmp_path / "eval", k=5, normalize=True, workers=0)
    files = {p.name for p in (tmp_path / "eval").iterdir()}
    assert {"predictions.csv", "predictions_normalized.csv", "summary.json", "pr_curve.png",
            "threshold.json"} <= files
    preds = Predictions.from_csv(tmp_path / "eval" / "predictions.csv")
    assert len(preds) == 10 * 5  # k per query
    assert isc_metrics(preds, bench.ground_truth).micro_ap == pytest.approx(cal.metrics.micro_ap)
    # lightly edited copies: the untrained (gist256-like) descriptor already ranks every original first
    assert cal.metrics.recall_at_1 == 1.0
    saved = load_threshold(tmp_path / "eval" / "threshold.json", trained.fingerprint)
    assert saved.target_met and saved.k == 5
    precision, recall, _ = precision_recall_at_threshold(preds, bench.ground_truth, saved.score)
    assert precision >= 0.9 and (precision, recall) == pytest.approx((saved.precision, saved.recall))
    assert recall == pytest.approx(cal.metrics.recall_at_p90)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["raw"]["micro_ap"] == pytest.approx(cal.metrics.micro_ap)
    assert summary["normalized"]["micro_ap"] == pytest.approx(cal.normalized.micro_ap)
    assert summary["normalized"]["beta"] == 1.0 and summary["normalized"]["n_background"] == 10
    norm = Predictions.from_csv(tmp_path / "eval" / "predictions_normalized.csv")
    assert norm.query_ids.tolist() == preds.query_ids.tolist()  # same candidates, shifted per query


def test_eval_cli_reports_unfamiliar_precision_and_a_heldout_benchmark(tiny_run, tiny_benchmark, tmp_path, capsys):
    from qkcopy.cli import main

    out = tmp_path / "ev"
    assert main(["eval", "--model", str(tiny_run), "--benchmark", str(tiny_benchmark), "--out", str(out),
                 "--heldout-benchmark", str(tiny_benchmark), "--calibration", "point", "--workers", "0"]) == 0
    text = capsys.readouterr().out
    saved = json.loads((out / "threshold.json").read_text())
    assert saved["rule"] == "point" and 0 <= saved["precision_lower"] <= saved["precision"]
    summary = json.loads((out / "summary.json").read_text())
    held = summary["heldout"]  # the same benchmark as held-out: the threshold's own precision and recall
    assert (held["precision"], held["recall"]) == pytest.approx((saved["precision"], saved["recall"]))
    assert f"precision {held['precision']:.3f}, recall {held['recall']:.3f} at this threshold" in text
    assert "95% lower bound" in text and "on unfamiliar edits" in text
    assert summary["families"] == {} and "not measured (the benchmark lists no edit families)" in text


def test_calibrate_scores_families_and_leaves_each_out(tiny_run, tiny_benchmark, tmp_path):
    import shutil

    root = tmp_path / "bench"
    shutil.copytree(tiny_benchmark, root)
    names = sorted(p.stem for p in (root / "queries").iterdir())
    queries = [{"id": q, "families": ["colour" if i % 2 else "border"]} for i, q in enumerate(names)]
    (root / "manifest.json").write_text(json.dumps({"format": "qkcopy-benchmark/1", "queries": queries}))
    cal = calibrate(load_trained(tiny_run), load_benchmark(root), tmp_path / "eval", k=5, workers=0, rule="point")
    assert set(cal.per_family) == {"colour", "border"}
    assert sum(v["copies"] for v in cal.per_family.values()) == cal.metrics.n_positives
    assert {f.family for f in cal.families} == {"colour", "border"}
    saved = load_threshold(tmp_path / "eval" / "threshold.json")
    assert saved.unfamiliar_precision is not None and 0.0 <= saved.unfamiliar_precision <= 1.0


def test_threshold_files_of_earlier_versions_still_load(tmp_path):
    old = {"format": "qkcopy-threshold/1", "score": -1.5, "precision": 0.9, "recall": 0.6, "target_precision": 0.9,
           "target_met": True, "fingerprint": "fp", "k": 10, "benchmark": "b"}
    (tmp_path / "threshold.json").write_text(json.dumps(old))
    t = load_threshold(tmp_path / "threshold.json", "fp")
    assert t.score == -1.5 and t.rule == "point" and t.unfamiliar_precision is None
    (tmp_path / "threshold.json").write_text(json.dumps(old | {"rule": "hopeful"}))
    with pytest.raises(ValueError, match="key rule must be one of"):
        load_threshold(tmp_path / "threshold.json", "fp")
