"""`qkcopy eval --regions` and `qkcopy search --regions`: a copy pasted into another picture is found, with its box."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from testkit import FAST, draw_images, refused

from qkcopy.cli import main
from qkcopy.data.regions import box_iou


def test_eval_and_search_with_regions_find_the_pasted_copy(tiny_run, tmp_path, one_thread):
    refs = draw_images(tmp_path / "bench" / "references", 12, seed=10, size=160, prefix="R000")
    host = Image.open(draw_images(tmp_path / "hosts", 1, seed=31, size=320)[0]).convert("RGB")
    true_box = (100, 60, 260, 220)  # the reference at half the host's side
    host.paste(Image.open(refs[5]).convert("RGB").resize((160, 160)), true_box[:2])
    (tmp_path / "bench" / "queries").mkdir()
    host.save(tmp_path / "bench" / "queries" / "Q00000.jpg", quality=90)
    (tmp_path / "bench" / "ground_truth.csv").write_text("query_id,reference_id\nQ00000,R000005\n")
    (tmp_path / "bench" / "manifest.json").write_text(json.dumps({"format": "qkcopy-benchmark/1"}))

    assert main(["eval", "--model", str(tiny_run), "--benchmark", str(tmp_path / "bench"), "--k", "3",
                 "--regions", "8", "--verify", "2", "--out", str(tmp_path / "ev")] + FAST) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["regions"] == 8 and summary["raw"]["recall_at_1"] == 1.0
    rows = list(csv.DictReader(open(tmp_path / "ev" / "regions.csv")))
    win = next(r for r in rows if r["reference_id"] == "R000005")
    box = [int(win[c]) for c in ("x0", "y0", "x1", "y1")]
    assert box_iou(np.array([box]), np.array([true_box]))[0, 0] >= 0.5
    checked = {(r["query_id"], r["reference_id"]): r for r in csv.DictReader(open(tmp_path / "ev" / "verification.csv"))}
    assert len(checked) == 2 and summary["verify"]["k"] == 2
    assert json.loads((tmp_path / "ev" / "threshold.json").read_text())["scoring"] == "regions=8 margin=0 verify=2"
    assert ("Q00000", "R000005") in checked  # drawn shapes hold too few SIFT keypoints to verify: see test_verify
    assert all(0.0 <= float(r["confidence"]) <= 1.0 and int(r["inliers"]) >= 0 for r in checked.values())

    assert main(["index", "--model", str(tiny_run), "--references", str(tmp_path / "bench" / "references"),
                 "--out", str(tmp_path / "idx")] + FAST) == 0
    assert main(["search", "--model", str(tiny_run), "--index", str(tmp_path / "idx"), "--regions", "8", "--k", "2",
                 str(tmp_path / "bench" / "queries" / "Q00000.jpg"), "--out", str(tmp_path / "r.json")] + FAST) == 0
    best = json.loads((tmp_path / "r.json").read_text())["matches"][0]
    assert best["reference"] == "R000005" and best["confidence"] is None
    assert box_iou(np.array([best["box"]]), np.array([true_box]))[0, 0] >= 0.5
    assert main(["search", "--model", str(tiny_run), "--index", str(tmp_path / "idx"), "--regions", "8", "--k", "2",
                 "--verify", "2", "--references", str(tmp_path / "bench" / "references"),
                 str(tmp_path / "bench" / "queries" / "Q00000.jpg"), "--out", str(tmp_path / "v.json")] + FAST) == 0
    rows = json.loads((tmp_path / "v.json").read_text())["matches"]
    assert len(rows) == 2 and all(0.0 <= m["confidence"] <= 1.0 for m in rows)
    assert rows[0]["score"] >= rows[1]["score"]


def test_search_verify_without_references_is_refused(tiny_run, built_index, tiny_benchmark, tmp_path, capsys):
    from testkit import refused

    refused(["search", "--model", str(tiny_run), "--index", str(built_index), "--verify", "2",
             str(tiny_benchmark / "queries" / "Q00000.jpg"), "--out", str(tmp_path / "r.csv")], capsys,
            "--verify needs --references")


def test_search_warns_when_the_threshold_was_made_another_way(tiny_run, built_index, tiny_benchmark, tmp_path,
                                                             caplog, one_thread):
    assert main(["eval", "--model", str(tiny_run), "--benchmark", str(tiny_benchmark), "--regions", "2",
                 "--out", str(tmp_path / "ev")] + FAST) == 0
    query = str(tiny_benchmark / "queries" / "Q00000.jpg")
    with caplog.at_level("WARNING", logger="qkcopy.retrieval.search"):
        assert main(["search", "--model", str(tiny_run), "--index", str(built_index), "--threshold",
                     str(tmp_path / "ev"), query, "--out", str(tmp_path / "a.csv")] + FAST) == 0
    assert "calibrated on scores made with regions=2 margin=0, these are made with whole" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="qkcopy.retrieval.search"):
        assert main(["search", "--model", str(tiny_run), "--index", str(built_index), "--threshold",
                     str(tmp_path / "ev"), "--regions", "2", query, "--out", str(tmp_path / "b.csv")] + FAST) == 0
    assert "calibrated on scores made" not in caplog.text


def test_a_runs_own_region_choice_is_the_default(tiny_run, tiny_benchmark, tmp_path, caplog, one_thread):
    """A preset's model.regions / region_margin / region_size are what eval and search use when no flag is given
    (the cpu presets ship 4 regions at 128 px); a flag overrides them, --regions 0 scores the whole image."""
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"].update(regions=2, region_size=64, region_margin=0.1)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    for flags, scoring in (([], "regions=2 margin=0.1 size=64"), (["--regions", "0"], "whole")):
        out = tmp_path / f"ev{len(flags)}"
        assert main(["eval", "--model", str(run), "--benchmark", str(tiny_benchmark), "--out", str(out), *flags]
                    + FAST) == 0
        assert json.loads((out / "threshold.json").read_text())["scoring"] == scoring
    assert main(["index", "--model", str(run), "--references", str(tiny_benchmark / "references"),
                 "--out", str(tmp_path / "idx")] + FAST) == 0
    with caplog.at_level("WARNING", logger="qkcopy.retrieval.search"):
        assert main(["search", "--model", str(run), "--index", str(tmp_path / "idx"), "--threshold",
                     str(tmp_path / "ev0"), str(tiny_benchmark / "queries" / "Q00000.jpg"),
                     "--out", str(tmp_path / "s.csv")] + FAST) == 0
    assert "calibrated on scores made" not in caplog.text  # search scored as the run's eval did


def test_embed_regions_writes_the_rows_eval_computes(tiny_run, tmp_path, one_thread, capsys):
    """`qkcopy embed --regions 3`: PREFIX.regions.h5 holds each image's whole-image row (equal to PREFIX.npy's)
    and its regions with boxes, the rows `describe_regions` computes; a damaged or foreign table is refused."""
    from qkcopy.model.trained import load_trained
    from qkcopy.retrieval.descriptors import read_npy
    from qkcopy.retrieval.region_table import read_region_table

    draw_images(tmp_path / "q", 4, seed=8, size=120)
    assert main(["embed", "--model", str(tiny_run), "--images", str(tmp_path / "q"), "--side", "query",
                 "--regions", "3", "--out", str(tmp_path / "d" / "q")] + FAST) == 0
    ids, whole = read_npy(tmp_path / "d" / "q")
    table, attrs = read_region_table(tmp_path / "d" / "q.regions.h5", load_trained(tiny_run).fingerprint)
    assert table.ids == ids and attrs["regions"] == 3
    np.testing.assert_allclose(table.whole().vectors, whole, atol=1e-6)
    assert (table.boxes[np.r_[True, table.owner[1:] != table.owner[:-1]]] == [0, 0, 120, 120]).all()
    again = load_trained(tiny_run).describe_regions(sorted((tmp_path / "q").glob("*.jpg")), 3, workers=0,
                                                    region_size=attrs["region_size"])
    np.testing.assert_allclose(again.vectors, table.vectors, atol=1e-6)
    assert (again.boxes == table.boxes).all() and len(table.vectors) > len(ids)
    with pytest.raises(Exception, match="made by model"):
        read_region_table(tmp_path / "d" / "q.regions.h5", "0" * 16)
    refused(["embed", "--model", str(tiny_run), "--images", str(tmp_path / "q"), "--side", "reference",
             "--regions", "3", "--out", str(tmp_path / "r")], capsys, "use --side query")


def test_search_reads_the_region_table_embed_wrote(tiny_run, tmp_path, one_thread, capsys):
    """`qkcopy search --region-table PREFIX.regions.h5` gives the matches `search --regions N --images` gives,
    from the stored rows (nothing described again); flags that disagree with the table are refused, and
    verification needs the query files."""
    refs = draw_images(tmp_path / "refs", 6, seed=10, size=160, prefix="R000")
    host = Image.open(draw_images(tmp_path / "hosts", 1, seed=31, size=320)[0]).convert("RGB")
    host.paste(Image.open(refs[2]).convert("RGB"), (100, 60))  # the reference at half the host's side
    (tmp_path / "q").mkdir()
    host.save(tmp_path / "q" / "Q00000.jpg", quality=90)
    draw_images(tmp_path / "q", 1, seed=4, size=150, prefix="Q0000")  # Q00000.jpg's neighbour: Q0000000.jpg
    assert main(["index", "--model", str(tiny_run), "--references", str(tmp_path / "refs"),
                 "--out", str(tmp_path / "idx")] + FAST) == 0
    assert main(["embed", "--model", str(tiny_run), "--images", str(tmp_path / "q"), "--side", "query",
                 "--regions", "4", "--out", str(tmp_path / "d" / "q")] + FAST) == 0
    search = ["search", "--model", str(tiny_run), "--index", str(tmp_path / "idx"), "--k", "2"]
    assert main(search + ["--images", str(tmp_path / "q"), "--regions", "4", "--out", str(tmp_path / "a.json")]
                + FAST) == 0
    table = str(tmp_path / "d" / "q.regions.h5")
    assert main(search + ["--region-table", table, "--out", str(tmp_path / "b.json")] + FAST) == 0
    a, b = (json.loads((tmp_path / f).read_text())["matches"] for f in ("a.json", "b.json"))
    assert [(m["query"], m["reference"], m["box"]) for m in a] == [(m["query"], m["reference"], m["box"]) for m in b]
    np.testing.assert_allclose([m["score"] for m in a], [m["score"] for m in b], rtol=1e-5)
    assert len(b) == 4 and b[0]["reference"] == "R000002" and b[0]["box"] != [0, 0, 320, 320]
    refused(search + ["--region-table", table, "--regions", "2", "--out", str(tmp_path / "c.json")], capsys,
            "holds rows made with --regions 4, not 2")
    refused(search + ["--region-table", table, "--verify", "1", "--references", str(tmp_path / "refs"),
                      "--out", str(tmp_path / "c.json")], capsys, "verification needs the query files", "Q0000")
