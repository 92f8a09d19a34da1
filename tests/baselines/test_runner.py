import json

import numpy as np
import pytest

from photo_pool import make_photos
from qkcopy.baselines.runner import BaselineOptions, fit_gist_pca, plot_runs, run_baseline
from qkcopy.model.gist256 import gist_descriptors
from qkcopy.data.benchmark import load_benchmark
from qkcopy.cli import main
from qkcopy.retrieval.descriptors import read_isc_h5
from qkcopy.data.images import SkipLog
from qkcopy.evaluation.metrics import isc_metrics
from qkcopy.model.pca import PCA
from qkcopy.evaluation.plots import plot_pr_curves
from qkcopy.evaluation.knn import search_predictions
from qkcopy.data.synth import BenchmarkOptions, make_benchmark

SMALL_PCA = BaselineOptions(pca_dim=16)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("pools")
    make_photos(root / "images", 40, seed=21)
    make_photos(root / "train", 30, seed=22, prefix="tr")
    opts = BenchmarkOptions(n_references=16, n_queries=16, matched_fraction=0.5, seed=5, strength="light")
    return make_benchmark(root / "images", root / "bench", root / "train", opts)


@pytest.fixture(scope="module")
def gist_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "gist"
    return out, run_baseline("gist", bench, out, k=10, options=SMALL_PCA)


def _control_micro_ap(run_dir, bench, seed: int) -> float:
    """µAP with the reference descriptors shuffled across ids: what chance gives on this benchmark."""
    q_ids, q = read_isc_h5(run_dir / "queries.h5")
    r_ids, r = read_isc_h5(run_dir / "references.h5")
    r = r[np.random.default_rng(seed).permutation(len(r))]
    return isc_metrics(search_predictions(q_ids, q, r_ids, r, k=10), bench.ground_truth).micro_ap


def test_gist_run_writes_everything(gist_run, bench):
    out, metrics = gist_run
    assert sorted(p.name for p in out.iterdir()) == ["gist_pca.safetensors", "pr_curve.png", "predictions.csv",
                                                     "queries.h5", "references.h5", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "gist" and summary["descriptor_dim"] == 16
    assert summary["metrics"] == metrics.as_dict()
    assert summary["options"]["pca_dim"] == 16 and summary["options"]["k"] == 10
    assert summary["skipped"] == {"queries": 0, "references": 0, "train": 0}
    assert set(summary["seconds"]) == {"pca_fit", "queries", "references", "search", "evaluate", "total"}
    for key in ("micro_ap", "recall_at_p90", "recall_at_1"):
        assert 0.0 <= summary["metrics"][key] <= 1.0
    q_ids, q = read_isc_h5(out / "queries.h5")
    assert q_ids == list(bench.query_ids) and q.shape == (16, 16)
    assert (out / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "predictions.csv").read_text().splitlines()) == 1 + 16 * 10


def test_gist_pca_is_fitted_on_training_images_only(gist_run, bench):
    out, _ = gist_run
    saved = PCA.load(out / "gist_pca.safetensors")
    on_train = PCA.fit(gist_descriptors(bench.train_paths, SkipLog())[0], dim=16)
    np.testing.assert_allclose(saved.components, on_train.components, atol=1e-5)
    on_refs = PCA.fit(gist_descriptors(bench.reference_paths, SkipLog())[0], dim=16)
    assert not np.allclose(saved.mean, on_refs.mean, atol=1e-3)


def test_pca_subset_is_capped_and_needs_enough_rows(bench):
    capped = fit_gist_pca(bench.train_paths, BaselineOptions(pca_dim=4, pca_max_train=10), SkipLog())
    assert capped.out_dim == 4
    with pytest.raises(ValueError, match="at least 256 training images"):
        fit_gist_pca(bench.train_paths, BaselineOptions(), SkipLog())


def test_gist_beats_shuffled_descriptors(gist_run, bench):
    out, metrics = gist_run
    control = max(_control_micro_ap(out, bench, seed) for seed in range(3))
    assert metrics.micro_ap > 0.6 and metrics.recall_at_1 >= 0.75
    assert metrics.micro_ap > control + 0.3


@pytest.mark.parametrize("method", ["tiny", "pdq", "phash"])
def test_hash_baselines(method, bench, tmp_path):
    metrics = run_baseline(method, bench, tmp_path / method)
    summary = json.loads((tmp_path / method / "summary.json").read_text())
    assert summary["descriptor_dim"] == {"tiny": 256, "pdq": 256, "phash": 64}[method]
    assert "pca_fit" not in summary["seconds"] and not (tmp_path / method / "gist_pca.safetensors").exists()
    assert metrics.micro_ap > _control_micro_ap(tmp_path / method, bench, seed=0)


def test_bad_images_are_skipped_and_counted(bench, tmp_path):
    import shutil

    copy = tmp_path / "bench"
    shutil.copytree(bench.root, copy)
    (copy / "queries" / "Q00003.jpg").write_bytes(b"garbage")
    (copy / "references" / "R000001.jpg").write_bytes(b"")
    run_baseline("tiny", load_benchmark(copy), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped"] == {"queries": 1, "references": 1, "train": 0}
    predicted = {line.split(",")[0] for line in (tmp_path / "run" / "predictions.csv").read_text().splitlines()[1:]}
    assert "Q00003" not in predicted and len(predicted) == 15
    assert "R000001" not in (tmp_path / "run" / "predictions.csv").read_text()


def test_refusals(bench, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        run_baseline("tiny", bench, tmp_path / "used")
    with pytest.raises(ValueError, match="unknown baseline method"):
        run_baseline("sift", bench, tmp_path / "new")


def test_plot_pr_curves_several(gist_run, tmp_path):
    run, metrics = gist_run
    path = plot_pr_curves({"a": metrics, "b": metrics}, tmp_path / "sub" / "pr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError):
        plot_pr_curves({}, tmp_path / "none.png")
    both = plot_runs([run, run], tmp_path / "runs.png")
    assert both.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_make_benchmark_then_baselines(tmp_path, capsys):
    make_photos(tmp_path / "images", 24, seed=31)
    make_photos(tmp_path / "train", 20, seed=32, prefix="tr")
    assert main(["make-benchmark", "--images", str(tmp_path / "images"), "--train-images", str(tmp_path / "train"),
                 "--out", str(tmp_path / "bench"), "--references", "10", "--queries", "8", "--seed", "1",
                 "--strength", "light"]) == 0
    assert "10 references, 8 queries (4 matched), 20 training images" in capsys.readouterr().out
    assert main(["make-benchmark", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "bench")]) == 2
    assert "not empty" in capsys.readouterr().err
    for method, extra in (("gist", ["--pca-dim", "8"]), ("tiny", [])):
        run = tmp_path / f"run-{method}"
        assert main(["baseline", "--method", method, "--benchmark", str(tmp_path / "bench"), "--out", str(run),
                     *extra]) == 0
        out = capsys.readouterr().out
        assert "µAP" in out and "R@P90" in out and "recall@1" in out and str(run) in out
        summary = json.loads((run / "summary.json").read_text())
        assert all(0.0 <= summary["metrics"][k] <= 1.0 for k in ("micro_ap", "recall_at_p90", "recall_at_1"))
        assert (run / "predictions.csv").is_file() and (run / "pr_curve.png").is_file()


def test_backbone_baseline_pca_on_train_and_unit_descriptors(bench, tmp_path):
    from qkcopy.baselines.runner import PooledBackbone, backbone_features

    options = BaselineOptions(pca_dim=16, input_size=64, workers=0, device="cpu")
    out = tmp_path / "backbone"
    metrics = run_baseline("backbone", bench, out, options=options)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["descriptor_dim"] == 16 and summary["options"]["backbone"] == "efficientnet_lite0"
    assert summary["options"]["input_size"] == 64 and "batch_size" not in summary["options"]
    q_ids, q = read_isc_h5(out / "queries.h5")
    assert q_ids == list(bench.query_ids)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    # naive reference: features one image at a time, PCA fitted on the training images' features only
    model = PooledBackbone("efficientnet_lite0", "imagenet")
    feats, kept = backbone_features(model, bench.train_paths, SkipLog(), options, "train")
    assert feats.shape == (30, 1280) and kept.tolist() == list(range(30))
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    saved = PCA.load(out / "backbone_pca.safetensors")
    np.testing.assert_allclose(saved.mean, PCA.fit(feats, dim=16).mean, atol=1e-5)
    first, _ = backbone_features(model, bench.query_paths[:1], SkipLog(), options, "one")
    z = saved.transform(first)[0]
    np.testing.assert_allclose(q[0], z / np.linalg.norm(z), atol=1e-4)
    assert metrics.micro_ap > _control_micro_ap(out, bench, seed=0) + 0.2
