"""Reading benchmarks: qkcopy's layout, a DISC21 download, the isc2021 repository layout, clear errors."""

from pathlib import Path

import pytest
from PIL import Image

from qkcopy.data.benchmark import load_benchmark
from qkcopy.data.isc_csv import GroundTruth


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

