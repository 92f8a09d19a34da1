"""`qkcopy match --collection` (no server) answers as the collection's own search: same ids, scores, verdicts."""

import json

import numpy as np
import pytest

from qkcopy.cli import main
from qkcopy.collection import Collection
from qkcopy.model.trained import load_trained

pytestmark = pytest.mark.usefixtures("one_thread")


def test_local_match_equals_the_collections_search(tiny_run, tiny_benchmark, tmp_path, capsys):
    coll = tmp_path / "coll"
    refs = tiny_benchmark / "references"
    assert main(["collection", "create", str(coll), "--model", str(tiny_run), "--threshold", "-0.05",
                 "--add", str(refs), "--device", "cpu"]) == 0
    queries = sorted((tiny_benchmark / "queries").glob("*.jpg"))[:3]
    out = tmp_path / "m.json"
    assert main(["match", "--collection", str(coll), *map(str, queries), "--k", "3", "--device", "cpu",
                 "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    trained = load_trained(tiny_run, "cpu")
    want = trained.describe("query", queries, workers=0)
    with Collection.open(coll) as c:
        rows = c.search(want.vectors, 3)
    for result, matches in zip(got, rows, strict=True):
        assert [m["id"] for m in result["matches"]] == [m.id for m in matches]
        np.testing.assert_allclose([m["score"] for m in result["matches"]], [m.score for m in matches], atol=1e-5)
        assert result["is_copy"] == any(m.score >= -0.05 for m in matches)
    printed = capsys.readouterr().out.splitlines()[-3:]
    assert [line.split("\t")[0] for line in printed] == [q.name for q in queries]
