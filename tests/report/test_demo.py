import json

import pytest
from PIL import Image

from qkcopy.cli import main
from qkcopy.report.demo import DemoOptions, split_overrides


def test_split_overrides():
    opt = split_overrides(DemoOptions(overrides=("a.b=1",)), ["demo.n_train=40", "model.image_size=64"])
    assert opt.n_train == 40 and opt.overrides == ("a.b=1", "model.image_size=64")
    with pytest.raises(ValueError, match="demo options are"):
        split_overrides(DemoOptions(), ["demo.nope=1"])


TINY = ["demo.n_references=8", "demo.n_queries=8", "demo.n_train=32", "demo.n_spares=2", "demo.image_side=96",
        "demo.backbone_size=64", "demo.pca_max_train=32", "demo.workers=0", "demo.sheet_examples=4",
        "model.weights=null", "model.image_size=64", "model.hidden=32", "model.descriptor_dim=16",
        "data.batch_size=8", "data.workers=0", "data.pca_images=32", "schedule.steps_per_phase=2"]


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    methods = ["GIST + PCA", "off-the-shelf efficientnet_lite0 64px", "QK Iteration at step 0 (PCA head init)",
               "QK Iteration after Q1", "QK Iteration after K1", "QK Iteration after Q2"]
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == methods
    report = (out / "report.md").read_text()
    for m in methods:
        assert f"| {m} |" in report and m in printed
        row = next(r for r in results["rows"] if r["method"] == m)
        assert 0.0 <= row["micro_ap"] <= 1.0 and row["seconds"] > 0
    assert results["options"]["n_train"] == 32 and "schedule.steps_per_phase=2" in results["options"]["overrides"]
    for png in ("pr_curves.png", "loss_curves.png", "retrievals.png"):
        assert f"]({png})" in report
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 200
    assert "<table>" in (out / "report.html").read_text()
    log = [json.loads(line) for line in (out / "qk" / "train_log.jsonl").read_text().splitlines()]
    assert [r["segment"] for r in log] == ["Q1", "Q1", "K1", "K1", "Q2", "Q2"]
    assert len(list((out / "benchmark" / "queries").iterdir())) == 8
    assert main(["demo", "--out", str(out)]) == 2  # refuses a used folder


def test_demo_benchmark_from_user_photos(tmp_path):
    from photo_pool import make_photos

    from qkcopy.report.demo import build_demo_benchmark

    make_photos(tmp_path / "many", 30, seed=3)
    opt = DemoOptions(n_references=8, n_queries=8, n_train=10, n_spares=2, image_side=64, workers=1)
    bench = build_demo_benchmark(tmp_path / "a", tmp_path / "many", opt)
    sources = [t["source"] for t in json.loads((bench.root / "manifest.json").read_text())["train"]]
    assert len(bench.train_ids) == 10 and all("/many/" in s for s in sources)  # enough photos: all theirs
    assert not (tmp_path / "a" / "images").exists()

    make_photos(tmp_path / "few", 13, seed=4)
    small = build_demo_benchmark(tmp_path / "b", tmp_path / "few", DemoOptions(n_train=12, image_side=64))
    assert (len(small.reference_ids), len(small.query_ids), small.n_matched) == (8, 8, 4)  # shrunk to 2/3 of 13
    assert len(list((tmp_path / "b" / "images").iterdir())) == 12  # training on drawn pictures
    make_photos(tmp_path / "five", 5, seed=5)
    with pytest.raises(ValueError, match="at least 6"):
        build_demo_benchmark(tmp_path / "c", tmp_path / "five", DemoOptions())
