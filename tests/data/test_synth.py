"""make_benchmark: layout, disjoint sources, byte-identical rebuilds, manifest replay, refusals."""

import io
import json
from pathlib import Path

import pytest
from photo_pool import make_photos
from PIL import Image

from qkcopy.data.augment import Edit, apply_recipe
from qkcopy.data.benchmark import Benchmark
from qkcopy.data.images import load_image
from qkcopy.data.synth import BenchmarkOptions, make_benchmark

OPTIONS = BenchmarkOptions(n_references=10, n_queries=10, matched_fraction=0.5, n_train=None, seed=7,
                           strength="medium")


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("pools")
    make_photos(root / "images", 30, seed=1)
    (root / "images" / "broken.jpg").write_bytes(b"this is not a jpeg")
    make_photos(root / "train", 12, seed=2, prefix="tr")
    return root


@pytest.fixture(scope="module")
def built(pools, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "bench"
    bench = make_benchmark(pools / "images", out, pools / "train", OPTIONS)
    return bench, json.loads((out / "manifest.json").read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout(built):
    bench, manifest = built
    root = bench.root
    assert isinstance(bench, Benchmark) and bench.layout == "qkcopy"
    assert sorted(p.name for p in root.iterdir()) == ["ground_truth.csv", "manifest.json", "queries",
                                                      "references", "train"]
    assert [p.name for p in sorted((root / "references").iterdir())] == [f"R{i:06d}.jpg" for i in range(10)]
    assert [p.name for p in sorted((root / "queries").iterdir())] == [f"Q{i:05d}.jpg" for i in range(10)]
    assert [p.name for p in sorted((root / "train").iterdir())] == [f"T{i:06d}.jpg" for i in range(12)]
    assert bench.query_ids == tuple(f"Q{i:05d}" for i in range(10))
    assert bench.reference_paths[3] == root / "references" / "R000003.jpg"
    assert len(bench.train_ids) == 12 and bench.n_matched == 5
    for path in bench.reference_paths + bench.query_paths + bench.train_paths:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
    lines = (root / "ground_truth.csv").read_text().splitlines()
    assert lines[0] == "query_id,reference_id" and len(lines) == 11
    assert sum(1 for line in lines[1:] if line.endswith(",")) == 5  # distractors have no reference
    assert manifest["options"]["seed"] == 7 and manifest["background_pool"] == "spares"
    assert [s["path"].endswith("broken.jpg") for s in manifest["skipped"]] == [True]


def test_sources_are_disjoint(built, pools):
    _, manifest = built
    refs = {r["source"] for r in manifest["references"]}
    distractors = {q["source"] for q in manifest["queries"] if q["kind"] == "distractor"}
    matched = {q["source"] for q in manifest["queries"] if q["kind"] == "matched"}
    train = {t["source"] for t in manifest["train"]}
    backgrounds = {q["background"]["source"] for q in manifest["queries"] if q["background"]}
    spares = {s["source"] for s in manifest["spares"]}
    assert len(refs) == 10 and len(distractors) == 5 and len(train) == 12
    assert matched <= refs and not distractors & refs
    assert not train & (refs | distractors) and not spares & (refs | distractors | train)
    assert backgrounds <= spares
    assert all(Path(s).parent == (pools / "images").resolve() for s in refs | distractors | spares)
    assert all(Path(s).parent == (pools / "train").resolve() for s in train)
    shas = [r["sha256"] for r in manifest["references"]] + [t["sha256"] for t in manifest["train"]]
    assert len(set(shas)) == len(shas)


def test_ground_truth_agrees_with_manifest(built):
    bench, manifest = built
    source_of_ref = {r["id"]: r["source"] for r in manifest["references"]}
    assert [q["id"] for q in manifest["queries"]] == list(bench.query_ids)
    for q in manifest["queries"]:
        assert bench.ground_truth.matches[q["id"]] == q["reference_id"]
        if q["kind"] == "matched":
            assert source_of_ref[q["reference_id"]] == q["source"]
        else:
            assert q["reference_id"] is None
    # ids do not reveal matches: matched queries are not simply the first half
    kinds = [q["kind"] for q in manifest["queries"]]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)


def test_query_files_replay_from_manifest(built):
    """Every query file is exactly its recipe applied to its source photo (then one JPEG encoding)."""
    bench, manifest = built
    for q in manifest["queries"]:
        edits = [Edit.from_dict(e) for e in q["edits"]]
        if edits and edits[-1].op == "encoding_quality":
            assert q["jpeg_quality"] == edits[-1].params["quality"]
            edits = edits[:-1]
        else:
            assert q["jpeg_quality"] == 90
        bg = load_image(q["background"]["source"]) if q["background"] else None
        img = apply_recipe(load_image(q["source"]), edits, bg)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q["jpeg_quality"])
        assert buf.getvalue() == (bench.root / "queries" / f"{q['id']}.jpg").read_bytes(), q["id"]


def test_same_arguments_give_identical_bytes(built, pools, tmp_path):
    bench, _ = built
    again = make_benchmark(pools / "images", tmp_path / "again", pools / "train", OPTIONS)
    assert _files(again.root) == _files(bench.root)
    other = make_benchmark(pools / "images", tmp_path / "other", pools / "train",
                           BenchmarkOptions(**{**OPTIONS.__dict__, "seed": 8}))
    assert _files(other.root)["ground_truth.csv"] != _files(bench.root)["ground_truth.csv"] or \
        _files(other.root)["references/R000000.jpg"] != _files(bench.root)["references/R000000.jpg"]


def test_refuses_non_empty_out_and_overwrites_a_benchmark(built, pools, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        make_benchmark(pools / "images", out, pools / "train", OPTIONS)
    with pytest.raises(FileExistsError, match="not a qkcopy benchmark"):
        make_benchmark(pools / "images", out, pools / "train", OPTIONS, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"

    small = BenchmarkOptions(n_references=4, n_queries=4, n_train=3, seed=1)
    make_benchmark(pools / "images", tmp_path / "b", pools / "train", small)
    with pytest.raises(FileExistsError):
        make_benchmark(pools / "images", tmp_path / "b", pools / "train", OPTIONS)
    bench = make_benchmark(pools / "images", tmp_path / "b", pools / "train", OPTIONS, overwrite=True)
    assert len(bench.reference_ids) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "out"]  # no temp folders left behind


def test_not_enough_photos_is_a_clear_error_and_leaves_nothing(pools, tmp_path):
    too_many = BenchmarkOptions(n_references=25, n_queries=20, matched_fraction=0.5, seed=0)
    with pytest.raises(ValueError, match="too few usable photos"):
        make_benchmark(pools / "images", tmp_path / "x", pools / "train", too_many)
    assert list(tmp_path.iterdir()) == []


def test_train_from_rest_of_images(pools, tmp_path):
    opts = BenchmarkOptions(n_references=8, n_queries=6, matched_fraction=0.5, n_train=10, seed=3)
    bench = make_benchmark(pools / "images", tmp_path / "b", None, opts)
    manifest = json.loads((bench.root / "manifest.json").read_text())
    used = {r["source"] for r in manifest["references"]} | {q["source"] for q in manifest["queries"]}
    train = {t["source"] for t in manifest["train"]}
    assert len(train) == 10 and not train & used
    assert len(manifest["spares"]) == 30 - 8 - 3 - 10
    with pytest.raises(ValueError, match="training images"):
        make_benchmark(pools / "images", tmp_path / "c", None, BenchmarkOptions(10, 6, 0.5, n_train=20))


def test_options_are_checked():
    with pytest.raises(ValueError, match="matched queries need"):
        BenchmarkOptions(n_references=3, n_queries=10, matched_fraction=0.5)
    with pytest.raises(ValueError, match="strength"):
        BenchmarkOptions(strength="extreme")
    assert BenchmarkOptions(n_queries=7, matched_fraction=0.2).n_matched == 1


def test_avoid_references_keeps_another_benchmarks_references_out(built, pools, tmp_path, capsys):
    """A second benchmark (the report benchmark's rule) never takes the first's reference photos as references;
    they may still be its distractor sources. Too few other photos, or --report without the first, is refused."""
    from testkit import refused

    from qkcopy.cli import main

    first = {r["sha256"] for r in built[1]["references"]}
    assert main(["make-benchmark", "--images", str(pools / "images"), "--train-images", str(pools / "train"),
                 "--references", "8", "--queries", "8", "--seed", "3", "--heldout", "all,paste",
                 "--avoid-references", str(built[0].root), "--out", str(tmp_path / "second")]) == 0
    second = json.loads((tmp_path / "second" / "manifest.json").read_text())
    assert not first & {r["sha256"] for r in second["references"]} and len(second["references"]) == 8
    assert {q["family"] for q in second["queries"]} <= {*second["options"]["heldout"]} and "paste" in \
        second["options"]["heldout"]
    refused(["make-benchmark", "--images", str(pools / "images"), "--references", "25", "--queries", "2",
             "--avoid-references", str(built[0].root), "--out", str(tmp_path / "third")], capsys,
            "too few photos outside the avoided references", extra=[])
    refused(["make-benchmark", "--report", "--out", str(tmp_path / "r")], capsys, "--avoid-references data/dev",
            extra=[])
