"""Dedup: grouping, pair scoring both ways, evaluation on hand-made cases, and the CLI end to end."""

import csv
import json

import numpy as np
import pytest

from qkcopy.cli import main
from qkcopy.retrieval.dedup import (
    copy_pairs,
    groups_of,
    pairs_within,
    precision_recall,
    read_ground_truth,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_groups_are_connected_components_largest_first():
    ids = list("abcdefg")
    assert groups_of(ids, [("a", "b"), ("c", "b"), ("e", "f"), ("g", "g")]) == [["a", "b", "c"], ["e", "f"]]
    assert groups_of(ids, []) == []
    assert pairs_within([["c", "a", "b"], ["e", "f"]]) == {("a", "b"), ("a", "c"), ("b", "c"), ("e", "f")}


def test_precision_recall_counts_unordered_pairs():
    true = {("a", "b"), ("a", "c"), ("b", "c")}
    assert precision_recall({("a", "b"), ("d", "e")}, true) == dict(precision=0.5, recall=1 / 3, predicted=2,
                                                                     true=3, correct=1)
    assert precision_recall(set(), true)["precision"] == 1.0 and precision_recall(set(), set())["recall"] == 1.0


def test_copy_pairs_take_the_better_direction_and_skip_self():
    ids = ["x", "y", "z"]
    k = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    q = np.array([[1, 0], [10, 3], [50, 50]], np.float32)  # x≈x, y≈x? no: y is 3 from its own K
    # Q_x to K_y: 81; Q_y to K_x: 109; Q_y to K_y: self (skipped); so (x, y) scores max(-81, -109) = -81
    pairs = copy_pairs(ids, q, k, threshold=-100.0, neighbours=2)
    assert pairs == {("x", "y"): -81.0}
    assert copy_pairs(ids, q, k, threshold=-50.0) == {}
    with pytest.raises(ValueError, match="float32"):
        copy_pairs(ids, q.astype(np.float64), k, -1.0)


def test_ground_truth_reads_pairs_and_closes_groups(tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("query_id,reference_id\nq1,r1\nq2,r1\nq3,\nq4,zz\n")
    assert read_ground_truth(gt, ["q1", "q2", "q3", "q4", "r1"]) == [["q1", "q2", "r1"]]
    with pytest.raises(ValueError, match="no pair"):
        read_ground_truth(gt, ["a", "b"])


def test_dedup_cli_on_a_benchmark_pooled_with_ground_truth(tiny_run, tiny_benchmark, tmp_path, capsys):
    out = tmp_path / "dd"
    argv = ["dedup", str(tiny_benchmark / "references"), str(tiny_benchmark / "queries"), "--model", str(tiny_run),
            "--threshold", "-0.05", "--ground-truth", str(tiny_benchmark / "ground_truth.csv"), "--out", str(out),
            "--workers", "0", "--device", "cpu"]
    assert main(argv) == 0
    report = json.loads((out / "groups.json").read_text())
    with open(out / "pairs.csv") as f:
        pairs = {(r["a"], r["b"]) for r in csv.DictReader(f)}
    true = {tuple(sorted((q, r))) for q, r in (line.split(",") for line in
                                                 (tiny_benchmark / "ground_truth.csv").read_text().split()[1:]) if r}
    expect = precision_recall(pairs, true)
    assert report["evaluation"]["pairs"] == expect and report["images"] == 22
    assert expect["recall"] >= 0.5 and expect["precision"] >= 0.5  # the edits are light: most are found
    assert {tuple(sorted(p)) for p in pairs} == pairs
    sheets = sorted(p.name for p in (out / "sheets").iterdir())
    assert sheets[-1] == "index.html" and len(sheets) == len(report["groups"]) + 1
    assert "data:image/jpeg;base64," in (out / "sheets" / "group-0001.html").read_text()
    assert "precision" in capsys.readouterr().out
    assert main(argv[:5] + ["--threshold", str(tmp_path / "nothing.json"), "--out", str(out)]) == 2
