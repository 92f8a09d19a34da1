"""Issue 10, rows 2 and 3: thresholds that would label every pair "not a copy", and descriptors of an unknown
model, are refused before any work, with one line naming the value or file."""

import json
import math

import numpy as np
import pytest
from testkit import FAST, refused

from qkcopy.cli import main
from qkcopy.errors import DescriptorError, ThresholdError
from qkcopy.model.trained import load_trained
from qkcopy.evaluation.threshold import load_threshold
from qkcopy.retrieval.descriptors import write_npy
from qkcopy.retrieval.index import ReferenceIndex
from qkcopy.retrieval.search import find_copies

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("value, needle", [("nan", "must be a finite number"), ("inf", "must be a finite number"),
                                           ("-inf", "must be a finite number"), ("0.5", "above 0"),
                                           ("1e-9", "above 0")])
def test_search_threshold_values_that_label_nothing_are_refused_up_front(tiny_run, tiny_benchmark, built_index,
                                                                          tmp_path, capsys, value, needle):
    # a --model that does not exist: the threshold is checked before the model is even loaded
    refused(["search", "--model", str(tmp_path / "no-model"), "--index", str(built_index), "--images",
             str(tiny_benchmark / "queries"), f"--threshold={value}", "--out", str(tmp_path / "r.csv")],
            capsys, f"threshold '{value}'", needle)
    assert not (tmp_path / "r.csv").exists()


def test_threshold_zero_and_negative_values_are_used(tiny_run, tiny_benchmark, built_index, tmp_path, capsys):
    assert load_threshold("0") == 0.0 and load_threshold("-0.25") == -0.25
    assert main(["search", "--model", str(tiny_run), "--index", str(built_index), "--images",
                 str(tiny_benchmark / "queries"), "--threshold=-1e9", "--out", str(tmp_path / "r.json")] + FAST) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["threshold"] == -1e9 and all(m["is_copy"] for m in data["matches"])


@pytest.mark.parametrize("score", [float("nan"), float("inf"), 0.5])
def test_threshold_json_with_nan_inf_or_positive_score_is_refused(tiny_run, tiny_benchmark, built_index, tmp_path,
                                                                  capsys, score):
    trained = load_trained(tiny_run)
    data = dict(format="qkcopy-threshold/1", score=score, precision=0.9, recall=0.5, target_precision=0.9,
                target_met=True, fingerprint=trained.fingerprint, k=10, benchmark="b")
    path = tmp_path / "threshold.json"
    path.write_text(json.dumps(data))  # Python writes NaN / Infinity, which json.loads reads back
    with pytest.raises(ThresholdError, match="key score"):
        load_threshold(path, trained.fingerprint)
    refused(["search", "--model", str(tiny_run), "--index", str(built_index), "--images",
             str(tiny_benchmark / "queries"), "--threshold", str(path), "--out", str(tmp_path / "r.csv")],
            capsys, path, "key score")
    assert not (tmp_path / "r.csv").exists()


def test_find_copies_refuses_a_bad_threshold_from_library_callers(tiny_run, built_index, tiny_benchmark):
    trained, index = load_trained(tiny_run), ReferenceIndex.load(built_index)
    queries = sorted((tiny_benchmark / "queries").glob("*.jpg"))[:1]
    for bad in (math.nan, math.inf, 1.0):
        with pytest.raises(ThresholdError):
            find_copies(trained, index, queries, threshold=bad, workers=0)


def test_descriptors_without_meta_are_refused_unless_allowed(tiny_run, tiny_benchmark, tmp_path, capsys):
    assert main(["embed", "--model", str(tiny_run), "--images", str(tiny_benchmark / "references"), "--side",
                 "reference", "--out", str(tmp_path / "refs")] + FAST) == 0
    (tmp_path / "refs.meta.json").unlink()
    refused(["index", "--model", str(tiny_run), "--descriptors", str(tmp_path / "refs.h5"), "--out",
             str(tmp_path / "idx")], capsys, tmp_path / "refs.h5", "refs.meta.json", "--allow-missing-meta")
    assert not (tmp_path / "idx").exists()
    assert main(["index", "--model", str(tiny_run), "--descriptors", str(tmp_path / "refs.h5"), "--out",
                 str(tmp_path / "idx"), "--allow-missing-meta"] + FAST) == 0
    assert len(ReferenceIndex.load(tmp_path / "idx")) == 12


def test_damaged_meta_json_names_the_file(tiny_run, tmp_path, capsys):
    write_npy(tmp_path / "d", ["a", "b"], np.zeros((2, 256), np.float32))
    (tmp_path / "d.meta.json").write_text('{"fingerprint": "x", ')
    line = refused(["index", "--model", str(tiny_run), "--descriptors", str(tmp_path / "d.npy"), "--out",
                    str(tmp_path / "idx")], capsys, tmp_path / "d.meta.json", "JSON error")
    assert "damaged descriptor metadata" in line
    (tmp_path / "d.meta.json").write_text('{"side": "reference"}')
    refused(["index", "--model", str(tiny_run), "--descriptors", str(tmp_path / "d.npy"), "--out",
             str(tmp_path / "idx")], capsys, tmp_path / "d.meta.json", "needs text keys fingerprint and side")
    with pytest.raises(DescriptorError):
        from qkcopy.retrieval.embed_shards import read_meta
        read_meta(tmp_path / "d.npy")
    assert not (tmp_path / "idx").exists()
