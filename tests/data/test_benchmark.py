import io
import json
from pathlib import Path

import pytest
from PIL import Image

from photo_pool import make_photos
from qkcopy.data.augment import Edit, apply_recipe
from qkcopy.data.benchmark import Benchmark, load_benchmark
from qkcopy.data.images import load_image
from qkcopy.data.isc_csv import GroundTruth
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


def _write(path: Path, img: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


@pytest.fixture
def disc21(tmp_path):
    """A miniature DISC21 download: zip parts unpacked side by side, dev ground truth covering 4 of 6 queries."""
    root = tmp_path / "disc21"
    img = Image.new("RGB", (16, 16), (10, 20, 30))
    for i in range(6):
        _write(root / "dev_queries" / "images" / "queries" / f"Q{i:05d}.jpg", img)
    for part, ids in ((0, range(3)), (1, range(3, 6))):
        for i in ids:
            _write(root / f"references_{part}" / "images" / "references" / f"R{i:06d}.jpg", img)
    _write(root / "train_0" / "images" / "train" / "T000000.jpg", img)
    (root / "dev_ground_truth.csv").write_text("query_id,reference_id\nQ00000,R000004\nQ00001,\nQ00002,R000001\nQ00003,\n")
    return root


def test_reads_a_disc21_download(disc21):
    bench = load_benchmark(disc21)
    assert bench.layout == "disc21"
    assert bench.query_ids == ("Q00000", "Q00001", "Q00002", "Q00003")  # only those the ground truth lists
    assert bench.reference_ids == tuple(f"R{i:06d}" for i in range(6))
    assert bench.reference_paths[4] == disc21 / "references_1" / "images" / "references" / "R000004.jpg"
    assert bench.train_ids == ("T000000",)
    assert dict(bench.ground_truth.matches) == {"Q00000": "R000004", "Q00001": None, "Q00002": "R000001",
                                                "Q00003": None}


def test_reads_the_isc2021_repo_layout(tmp_path):
    img = Image.new("RGB", (16, 16))
    for name in ("queries/Q00000.jpg", "queries/Q00001.jpg", "references/R000000.jpg"):
        _write(tmp_path / "images" / name, img)
    (tmp_path / "list_files").mkdir()
    GroundTruth({"Q00000": "R000000", "Q00001": None}).to_csv(tmp_path / "list_files" / "public_ground_truth.csv")
    bench = load_benchmark(tmp_path)
    assert bench.query_ids == ("Q00000", "Q00001") and bench.train_ids == () and bench.n_matched == 1


def test_load_errors_name_the_problem(disc21):
    (disc21 / "dev_ground_truth.csv").write_text("query_id,reference_id\nQ00000,R000004\nQ99999,\n")
    with pytest.raises(ValueError, match="Q99999"):
        load_benchmark(disc21)
    (disc21 / "dev_ground_truth.csv").write_text("query_id,reference_id\nQ00000,R777777\n")
    with pytest.raises(ValueError, match="R777777"):
        load_benchmark(disc21)
    (disc21 / "dev_ground_truth.csv").unlink()
    with pytest.raises(FileNotFoundError, match="ground-truth"):
        load_benchmark(disc21)
    (disc21 / "dev_ground_truth.csv").write_text("query_id,reference_id\nQ00000,\n")
    _write(disc21 / "references_1" / "images" / "references" / "R000000.png", Image.new("RGB", (8, 8)))
    with pytest.raises(ValueError, match="R000000 names two files"):
        load_benchmark(disc21)
    for part in ("references_0", "references_1"):
        for p in sorted((disc21 / part).rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (disc21 / part).rmdir()
    with pytest.raises(FileNotFoundError, match="no reference folder"):
        load_benchmark(disc21)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_benchmark(disc21 / "nowhere")

