"""CLI smoke: embed → index (flat, IVF, --add) → eval → search with the calibrated threshold; refusals."""

import csv
import json

import numpy as np
import pytest

from qkcopy.cli import main
from qkcopy.retrieval.descriptors import write_npy
from qkcopy.retrieval.index import ReferenceIndex
from qkcopy.model.trained import load_trained

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--workers", "0", "--device", "cpu"]


def _ok(argv):
    assert main(argv + FAST) == 0, argv


def _refused(argv, capsys, message):
    assert main(argv + FAST) == 2, argv
    err = capsys.readouterr().err
    assert message in err, err


def _gt(bench):
    rows = (bench / "ground_truth.csv").read_text().splitlines()[1:]
    return {q: r for q, r in (line.split(",") for line in rows) if r}


def test_index_eval_search_round_trip(tiny_run, tiny_benchmark, tmp_path, capsys):
    refs, queries = tiny_benchmark / "references", tiny_benchmark / "queries"
    _ok(["index", "--model", str(tiny_run), "--references", str(refs), "--out", str(tmp_path / "idx")])
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["fingerprint"] == load_trained(tiny_run).fingerprint and meta["n"] == 12 and meta["dim"] == 256
    _ok(["eval", "--model", str(tiny_run), "--benchmark", str(tiny_benchmark), "--out", str(tmp_path / "ev"),
         "--k", "5"])
    assert "copy threshold" in capsys.readouterr().out
    _ok(["search", "--model", str(tiny_run), "--index", str(tmp_path / "idx"), "--images", str(queries),
         "--threshold", str(tmp_path / "ev" / "threshold.json"), "--k", "3", "--out", str(tmp_path / "r.csv")])
    out = capsys.readouterr().out
    assert "6 of 10 images are copies" in out
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 10 * 3
    assert {(r["query"], r["reference"]) for r in rows if r["is_copy"] == "1"} == set(_gt(tiny_benchmark).items())
    assert all(float(a["score"]) >= float(b["score"]) for a, b in zip(rows, rows[1:]) if a["query"] == b["query"])

    # a JSON result for two files given on the command line, labelled with a plain score threshold
    _ok(["search", "--model", str(tiny_run), "--index", str(tmp_path / "idx"), str(queries / "Q00000.jpg"),
         str(queries / "Q00007.jpg"), "--threshold=-1e9", "--k", "2", "--out", str(tmp_path / "r.json")])
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["threshold"] == -1e9 and data["queries"] == ["Q00000", "Q00007"]
    assert len(data["matches"]) == 4 and all(m["is_copy"] for m in data["matches"])


def test_embed_then_index_descriptors_add_and_ivf(tiny_run, tiny_benchmark, make_images, tmp_path, capsys):
    refs = tiny_benchmark / "references"
    _ok(["embed", "--model", str(tiny_run), "--images", str(refs), "--side", "reference",
         "--out", str(tmp_path / "refs"), "--shard-size", "5"])
    assert "12 reference descriptors" in capsys.readouterr().out
    _ok(["index", "--model", str(tiny_run), "--descriptors", str(tmp_path / "refs.h5"), "--out", str(tmp_path / "i")])
    extra = make_images(tmp_path / "extra", 3, seed=20, prefix="X")
    _ok(["index", "--model", str(tiny_run), "--references", str(tmp_path / "extra"), "--out", str(tmp_path / "i"),
         "--add"])
    index = ReferenceIndex.load(tmp_path / "i")
    assert index.ids == [f"R000{i:03d}" for i in range(12)] + [p.stem for p in extra]
    _refused(["index", "--model", str(tiny_run), "--references", str(tmp_path / "extra"),
              "--out", str(tmp_path / "i"), "--add"], capsys, "already in the index, e.g. X000")
    _refused(["index", "--model", str(tiny_run), "--references", str(refs), "--out", str(tmp_path / "i")],
             capsys, "already exists; pass --add")

    _ok(["index", "--model", str(tiny_run), "--descriptors", str(tmp_path / "refs.npy"), "--out",
         str(tmp_path / "ivf"), "--type", "ivf", "--nlist", "2"])
    ivf = ReferenceIndex.load(tmp_path / "ivf")
    assert ivf.kind == "ivf" and ivf.params["nlist"] == 2
    _ok(["index", "--model", str(tiny_run), "--descriptors", str(tmp_path / "refs.h5"), "--out",
         str(tmp_path / "flat")])
    flat = ReferenceIndex.load(tmp_path / "flat")
    assert flat.ids == ivf.ids
    q = np.random.default_rng(0).normal(size=(4, 256)).astype(np.float32) + flat.index.reconstruct(0)
    for a, b in zip(ivf.search(q, 5, nprobe=2), flat.search(q, 5)):  # every cell probed: exact
        np.testing.assert_array_equal(a, b)


def test_refusals(tiny_run, other_tiny_run, tiny_benchmark, tmp_path, capsys):
    refs, queries = tiny_benchmark / "references", tiny_benchmark / "queries"
    _ok(["index", "--model", str(tiny_run), "--references", str(refs), "--out", str(tmp_path / "idx")])
    other = load_trained(other_tiny_run).fingerprint
    _refused(["search", "--model", str(other_tiny_run), "--index", str(tmp_path / "idx"), "--images", str(queries),
              "--out", str(tmp_path / "r.csv")], capsys, f"come from model {other}, but this index was built")
    _refused(["index", "--model", str(other_tiny_run), "--references", str(queries), "--out", str(tmp_path / "idx"),
              "--add"], capsys, "this index was built from model")
    (tmp_path / "empty").mkdir()
    _refused(["index", "--model", str(tiny_run), "--references", str(tmp_path / "empty"), "--out",
              str(tmp_path / "e")], capsys, "no images")
    _refused(["search", "--model", str(tiny_run), "--index", str(tmp_path / "idx"), "--images",
              str(tmp_path / "empty"), "--out", str(tmp_path / "r.csv")], capsys, "no images")
    _refused(["search", "--model", str(tiny_run), "--index", str(tmp_path / "idx"), str(queries / "Q00000.jpg"),
              "--out", str(tmp_path / "r.txt")], capsys, "must end in .csv or .json")
    write_npy(tmp_path / "small", ["a", "b"], np.zeros((2, 128), np.float32))
    _refused(["index", "--model", str(tiny_run), "--descriptors", str(tmp_path / "small.npy"), "--out",
              str(tmp_path / "s"), "--allow-missing-meta"], capsys, "holds 128-d descriptors but the model makes 256-d")
    _ok(["embed", "--model", str(tiny_run), "--images", str(queries), "--side", "query", "--out", str(tmp_path / "q")])
    _refused(["index", "--model", str(tiny_run), "--descriptors", str(tmp_path / "q.h5"), "--out",
              str(tmp_path / "s")], capsys, "holds query descriptors")
    _refused(["embed", "--model", str(tiny_run), "--images", str(tmp_path / "empty"), "--side", "query",
              "--out", str(tmp_path / "x")], capsys, "no images")
