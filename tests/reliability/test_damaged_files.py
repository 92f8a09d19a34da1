"""Issue 10, row 1: damaged index, weights, config and threshold files end in one line naming the file.

Each case runs the real CLI (`qkcopy.cli.main`) on a copy of a tiny run or index with one file damaged, and
checks: exit status 2, the last stderr line is `qkcopy <cmd>: error: …` naming the file, no traceback, and
nothing written (no results file) or changed (the index files are byte-identical afterwards).
"""

import json
import shutil

import pytest
from testkit import FAST, refused

from qkcopy.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _search(run, index, queries, out, *extra):
    return ["search", "--model", str(run), "--index", str(index), "--images", str(queries), "--out", str(out),
            *extra]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_index_faiss(built_index, tiny_run, tiny_benchmark, tmp_path, capsys, damage):
    index = tmp_path / "idx"
    shutil.copytree(built_index, index)
    data = (index / "index.faiss").read_bytes()
    (index / "index.faiss").write_bytes(data[:len(data) // 2] if damage == "truncated" else b"")
    before = _snapshot(index)
    refused(_search(tiny_run, index, tiny_benchmark / "queries", tmp_path / "r.csv"), capsys,
            index / "index.faiss", "damaged faiss index", "rebuild")
    assert not (tmp_path / "r.csv").exists() and _snapshot(index) == before
    refused(["index", "--model", str(tiny_run), "--references", str(tiny_benchmark / "queries"), "--out",
             str(index), "--add"], capsys, index / "index.faiss")
    assert _snapshot(index) == before  # --add on a damaged index changed nothing


def test_damaged_index_meta(built_index, tiny_run, tiny_benchmark, tmp_path, capsys):
    index = tmp_path / "idx"
    shutil.copytree(built_index, index)
    (index / "meta.json").write_text('{"format": "qkcopy-index/1", "n": ')
    refused(_search(tiny_run, index, tiny_benchmark / "queries", tmp_path / "r.csv"), capsys,
            index / "meta.json", "JSON error at line 1")


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_weights(tiny_run, tiny_benchmark, built_index, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = run / "checkpoints" / "latest" / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 3] if damage == "truncated" else b"")
    refused(_search(run, built_index, tiny_benchmark / "queries", tmp_path / "r.csv"), capsys,
            weights, "damaged checkpoint file")
    refused(["embed", "--model", str(run), "--images", str(tiny_benchmark / "queries"), "--side", "query",
             "--out", str(tmp_path / "q")], capsys, weights)
    assert not list(tmp_path.glob("q*")) and not (tmp_path / "r.csv").exists()


def test_malformed_config_yaml(tiny_run, tiny_benchmark, built_index, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "config.yaml").write_text("model:\n  backbone: [unclosed\nloss: {tau: 0.07\n")
    refused(_search(run, built_index, tiny_benchmark / "queries", tmp_path / "r.csv"), capsys,
            run / "config.yaml", "damaged config file", "line")
    (run / "config.yaml").write_text("- just\n- a list\n")
    refused(_search(run, built_index, tiny_benchmark / "queries", tmp_path / "r.csv"), capsys,
            run / "config.yaml", "holds a mapping")


@pytest.fixture(scope="module")
def threshold_file(tiny_run, tiny_benchmark, tmp_path_factory):
    out = tmp_path_factory.mktemp("ev")
    assert main(["eval", "--model", str(tiny_run), "--benchmark", str(tiny_benchmark), "--out", str(out),
                 "--k", "5"] + FAST) == 0
    return json.loads((out / "threshold.json").read_text())


@pytest.mark.parametrize("case, needle", [
    ("missing", "missing key(s) recall"),
    ("extra", "unknown key(s) colour"),
    ("string", "key score must be float, got '-0.5'"),
    ("garbage", "JSON error at line 1"),
    ("list", "not a qkcopy threshold file"),
])
def test_bad_threshold_json(threshold_file, tiny_run, tiny_benchmark, built_index, tmp_path, capsys, case, needle):
    data = dict(threshold_file)
    text = None
    if case == "missing":
        del data["recall"]
    elif case == "extra":
        data["colour"] = "blue"
    elif case == "string":
        data["score"] = "-0.5"
    elif case == "garbage":
        text = "{'score': -0.5}"
    else:
        text = "[1, 2]"
    path = tmp_path / "threshold.json"
    path.write_text(text if text is not None else json.dumps(data))
    refused(_search(tiny_run, built_index, tiny_benchmark / "queries", tmp_path / "r.csv", "--threshold",
                    str(path)), capsys, path, needle)
    assert not (tmp_path / "r.csv").exists()


def test_debug_shows_the_traceback(built_index, tiny_run, tiny_benchmark, tmp_path, capsys):
    index = tmp_path / "idx"
    shutil.copytree(built_index, index)
    (index / "index.faiss").write_bytes(b"")
    argv = _search(tiny_run, index, tiny_benchmark / "queries", tmp_path / "r.csv") + FAST
    assert main(argv + ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "IndexFileError" in err
    assert err.strip().splitlines()[-1].startswith("qkcopy search: error: ")
