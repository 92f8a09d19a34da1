"""Per-family scores: a held-out benchmark records one family per query; metrics per family match a by-hand
subset; the `qkcopy families` table."""

import json

import numpy as np
import pytest

from photo_pool import make_photos
from qkcopy.cli import main
from qkcopy.data.families import family_of_op
from qkcopy.data.isc_csv import GroundTruth, Predictions
from qkcopy.data.synth import BenchmarkOptions, make_benchmark
from qkcopy.evaluation.per_family import family_table, per_family_metrics, query_families
from qkcopy.evaluation.metrics import isc_metrics


@pytest.fixture(scope="module")
def heldout_bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    make_photos(root / "images", 30, seed=4)
    options = BenchmarkOptions(n_references=10, n_queries=12, matched_fraction=0.5, n_train=4, seed=3,
                               heldout=("collage", "posterize", "border"))
    return make_benchmark(root / "images", root / "bench", None, options)


def test_heldout_benchmark_records_one_family_per_query(heldout_bench):
    families = query_families(heldout_bench)
    assert set(families) == set(heldout_bench.query_ids)
    assert all(len(fs) == 1 and fs[0] in ("collage", "posterize", "border") for fs in families.values())
    manifest = json.loads((heldout_bench.root / "manifest.json").read_text())
    assert manifest["options"]["heldout"] == ["collage", "posterize", "border"]
    assert all("edits" not in q for q in manifest["queries"])  # no AugLy recipe was used


def test_per_family_metrics_equal_the_metrics_of_the_subset():
    gt = GroundTruth({"q1": "r1", "q2": "r2", "q3": None, "q4": "r4"})
    families = {"q1": ["a"], "q2": ["a", "b"], "q3": ["a"], "q4": ["b"]}
    preds = Predictions(np.array(["q1", "q2", "q3", "q4", "q4"]), np.array(["r1", "r9", "r1", "r4", "r2"]),
                        np.array([-0.1, -0.2, -0.05, -0.3, -0.01]))
    got = per_family_metrics(preds, gt, families)
    want_a = isc_metrics(Predictions(preds.query_ids[:3], preds.reference_ids[:3], preds.scores[:3]),
                      GroundTruth({"q1": "r1", "q2": "r2", "q3": None}))
    assert got["a"].micro_ap == pytest.approx(want_a.micro_ap) and got["a"].recall_at_1 == pytest.approx(0.5)
    assert got["b"].recall_at_1 == 0.0  # q2's top is wrong; q4's top (r2) outranks its true match
    assert "| a | 2 |" in family_table({"m": got}, {"a": 2, "b": 2})


def test_families_cli_prints_a_table(heldout_bench, tmp_path, capsys):
    families = query_families(heldout_bench)
    q = np.array(sorted(families))
    truth = heldout_bench.ground_truth.matches
    refs = np.array([truth[i] or "R000000" for i in q])
    scores = np.array([-0.1 if truth[i] else -0.5 for i in q])  # a perfect method
    (tmp_path / "perfect").mkdir()
    Predictions(q, refs, scores).to_csv(tmp_path / "perfect" / "predictions.csv")
    assert main(["families", "--benchmark", str(heldout_bench.root), str(tmp_path / "perfect"),
                 "--out", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr().out
    assert "perfect µAP" in out and out.count("| 1.000 | 1.000 |") == len({f[0] for f in families.values()})
    assert (tmp_path / "t.md").read_text().strip() == out.strip()


def test_families_of_an_augly_benchmark_come_from_its_recipes(tmp_path):
    make_photos(tmp_path / "images", 20, seed=5)
    bench = make_benchmark(tmp_path / "images", tmp_path / "b", None,
                           BenchmarkOptions(n_references=6, n_queries=6, matched_fraction=0.5, n_train=2, seed=1))
    families = query_families(bench)
    manifest = json.loads((bench.root / "manifest.json").read_text())
    for q in manifest["queries"]:
        assert families[q["id"]] == sorted({family_of_op(e["op"]) for e in q["edits"]}) and families[q["id"]]
        del q["families"]  # as an older qkcopy wrote it: derived from the recipe all the same
    (bench.root / "manifest.json").write_text(json.dumps(manifest))
    assert query_families(bench) == families


def test_groups_score_the_queries_of_any_of_their_families():
    gt = GroundTruth({"q1": "r1", "q2": "r2", "q3": None, "q4": "r4"})
    families = {"q1": ["a"], "q2": ["b"], "q3": ["c"], "q4": ["c"]}
    preds = Predictions(np.array(["q1", "q2", "q3", "q4"]), np.array(["r1", "r9", "r1", "r4"]),
                        np.array([-0.1, -0.2, -0.05, -0.3]))
    got = per_family_metrics(preds, gt, families, {"ab": ("a", "b"), "every": ("a", "b", "c")})
    want = isc_metrics(Predictions(preds.query_ids[:2], preds.reference_ids[:2], preds.scores[:2]),
                    GroundTruth({"q1": "r1", "q2": "r2"}))
    assert got["ab"].micro_ap == pytest.approx(want.micro_ap) and got["ab"].recall_at_1 == 0.5
    assert got["every"].micro_ap == pytest.approx(isc_metrics(preds, gt).micro_ap)
    assert list(got)[-2:] == ["ab", "every"]  # groups after the families in the table


def test_families_cli_group_rows_and_refusals(heldout_bench, tmp_path, capsys):
    families = query_families(heldout_bench)
    q = np.array(sorted(families))
    truth = heldout_bench.ground_truth.matches
    refs = np.array([truth[i] or "R000000" for i in q])
    Predictions(q, refs, np.array([-0.1 if truth[i] else -0.5 for i in q])).to_csv(tmp_path / "predictions.csv")
    assert main(["families", "--benchmark", str(heldout_bench.root), str(tmp_path / "predictions.csv"),
                 "--group", "held=collage,border", "--group", "all=all"]) == 0
    out = capsys.readouterr().out
    copies = sum(1 for i, fs in families.items() if truth.get(i) and fs[0] in ("collage", "border"))
    assert f"| held | {copies} | 1.000 | 1.000 |" in out and "| all | " in out
    assert main(["families", "--benchmark", str(heldout_bench.root), str(tmp_path / "predictions.csv"),
                 "--group", "x=teleport"]) == 2
    assert "--group 'x=teleport'" in capsys.readouterr().err
