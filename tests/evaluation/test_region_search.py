"""Region scoring: best over a query's regions (checked against a loop), and a pasted copy found with its box."""

import json

import numpy as np
import pytest
from PIL import Image
from testkit import draw_images

from qkcopy.data.benchmark import load_benchmark
from qkcopy.data.regions import box_iou
from qkcopy.evaluation.model_eval import evaluate_model
from qkcopy.evaluation.region_search import region_predictions
from qkcopy.model.trained import load_trained


def test_best_region_per_pair_matches_a_loop():
    rng = np.random.default_rng(0)
    refs = rng.normal(size=(7, 5)).astype(np.float32)
    vectors = rng.normal(size=(9, 5)).astype(np.float32)  # query 0: rows 0-3, query 1: 4-5, query 2: 6-8
    owner = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    boxes = np.arange(36).reshape(9, 4)
    margin, k = 0.5, 3
    got = region_predictions(["a", "b", "c"], vectors, owner, boxes, [f"r{i}" for i in range(7)], refs, k, margin)
    d2 = ((vectors[:, None, :].astype(np.float64) - refs[None]) ** 2).sum(-1)  # (T, Nr)
    d2[np.r_[False, owner[1:] == owner[:-1]]] += margin  # every region but each query's first row
    for q, qid in enumerate("abc"):
        rows = np.flatnonzero(owner == q)
        best = d2[rows].min(axis=0)  # (Nr,)
        top = np.argsort(best, kind="stable")[:k]
        mine = got.predictions.query_ids == qid
        assert got.predictions.reference_ids[mine].tolist() == [f"r{i}" for i in top]
        np.testing.assert_allclose(got.predictions.scores[mine], -best[top], rtol=1e-5)
        winners = rows[d2[rows][:, top].argmin(axis=0)]
        assert got.region[mine].tolist() == winners.tolist()
        assert got.boxes[mine].tolist() == boxes[winners].tolist()


def test_owner_rows_must_be_grouped():
    v = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="non-decreasing"):
        region_predictions(["a", "b"], v, np.array([1, 0, 0]), np.zeros((3, 4)), ["r"], v[:1], 1)


def _paste_benchmark(root):
    """12 references; one query = reference R000003 shrunk to half the host's side and pasted into another
    picture; one unrelated query."""
    refs = draw_images(root / "references", 12, seed=10, size=160, prefix="R000")
    hosts = draw_images(root / ".hosts", 2, seed=31, size=320)
    (root / "queries").mkdir()
    host = Image.open(hosts[0]).convert("RGB")
    box = (100, 60, 260, 220)  # x0, y0, x1, y1: 160 px = 50 % of the host's side
    host.paste(Image.open(refs[3]).convert("RGB").resize((160, 160)), box[:2])
    host.save(root / "queries" / "Q00000.jpg", quality=90)
    Image.open(hosts[1]).save(root / "queries" / "Q00001.jpg", quality=90)
    (root / "ground_truth.csv").write_text("query_id,reference_id\nQ00000,R000003\nQ00001,\n")
    (root / "manifest.json").write_text(json.dumps({"format": "qkcopy-benchmark/1", "note": "test"}))
    return root, box


def test_pasted_copy_found_with_regions_and_its_box(tiny_run, tmp_path, one_thread):
    root, true_box = _paste_benchmark(tmp_path / "bench")
    trained = load_trained(tiny_run, "cpu")
    bench = load_benchmark(root)
    whole = evaluate_model(trained, bench, k=3, workers=0)
    with_regions = evaluate_model(trained, bench, k=3, workers=0, regions=8)
    p = with_regions.predictions
    top = p.reference_ids[p.query_ids == "Q00000"][0]
    assert top == "R000003"
    box = with_regions.regions.box_of("Q00000", "R000003")
    assert box_iou(np.array([box]), np.array([true_box]))[0, 0] >= 0.5, box
    assert with_regions.metrics.micro_ap > whole.metrics.micro_ap
