"""Reference index: build / save / load / add / search against a brute-force reference, IVF types, refusals."""

import json

import numpy as np
import pytest

from qkcopy.errors import FingerprintMismatch
from qkcopy.retrieval.faiss_index import default_nlist
from qkcopy.retrieval.index import ReferenceIndex, build_index, check_ids


def _vectors(n, dim=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def _ids(n, start=0):
    return [f"R{i:04d}" for i in range(start, start + n)]


def _brute_force(queries, refs, k):
    """Naive reference: every squared distance by a Python loop over references, then sort."""
    d2 = np.stack([((queries - r) ** 2).sum(axis=1) for r in refs], axis=1).astype(np.float64)  # (Nq, N)
    rows = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d2, rows, axis=1), rows


def test_flat_search_equals_brute_force_after_round_trip(tmp_path):
    refs, queries = _vectors(50), _vectors(7, seed=1)
    index = build_index(_ids(50), refs, "fp1")
    index.save(tmp_path / "idx")
    loaded = ReferenceIndex.load(tmp_path / "idx")
    assert loaded.ids == _ids(50) and loaded.fingerprint == "fp1" and loaded.kind == "flat" and loaded.dim == 16
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["fingerprint"] == "fp1" and meta["dim"] == 16 and meta["type"] == "flat" and meta["n"] == 50
    sqdist, rows = loaded.search(queries, k=5)
    want_d, want_rows = _brute_force(queries, refs, 5)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(sqdist, want_d, rtol=1e-5, atol=1e-4)


def test_add_appends_without_rebuilding_and_matches_one_shot(tmp_path):
    refs = _vectors(40)
    index = build_index(_ids(30), refs[:30], "fp1")
    index.save(tmp_path / "idx")
    grown = ReferenceIndex.load(tmp_path / "idx")
    grown.add(_ids(10, start=30), refs[30:], "fp1")
    grown.save(tmp_path / "idx")
    grown = ReferenceIndex.load(tmp_path / "idx")
    one_shot = build_index(_ids(40), refs, "fp1")
    queries = _vectors(5, seed=2)
    assert grown.ids == _ids(40)
    for a, b in zip(grown.search(queries, 8), one_shot.search(queries, 8)):
        np.testing.assert_array_equal(a, b)


def test_add_refuses_duplicates_other_model_and_dimension():
    index = build_index(_ids(10), _vectors(10), "fp1")
    with pytest.raises(ValueError, match="already in the index, e.g. R0003"):
        index.add(["R0003", "new"], _vectors(2, seed=3), "fp1")
    with pytest.raises(FingerprintMismatch, match="model fp2"):
        index.add(["new"], _vectors(1, seed=3), "fp2")
    with pytest.raises(ValueError, match="dimension 8 but the index holds 16-d"):
        index.add(["new"], _vectors(1, dim=8), "fp1")
    with pytest.raises(ValueError, match="duplicated ids, e.g. x"):
        index.add(["x", "x"], _vectors(2, seed=4), "fp1")
    assert len(index) == 10 and len(index.ids) == 10  # nothing was added by the refused calls


def test_search_refuses_wrong_dimension_and_build_refuses_bad_ids():
    index = build_index(_ids(10), _vectors(10), "fp1")
    with pytest.raises(ValueError, match="dimension 12"):
        index.search(_vectors(2, dim=12))
    with pytest.raises(ValueError, match="3 ids for 4 descriptors"):
        build_index(_ids(3), _vectors(4), "fp1")
    with pytest.raises(ValueError, match="duplicated ids"):
        check_ids(["a", "b", "a"], 3, "refs")
    with pytest.raises(ValueError, match="empty or holds a line break"):
        check_ids(["a", ""], 2, "refs")


def test_ivf_finds_exact_neighbours_when_probing_every_cell(tmp_path):
    refs, queries = _vectors(400), _vectors(10, seed=5)
    index = build_index(_ids(400), refs, "fp1", kind="ivf", nlist=8)
    assert index.params["nlist"] == 8
    index.save(tmp_path / "ivf")
    loaded = ReferenceIndex.load(tmp_path / "ivf")
    assert loaded.kind == "ivf" and loaded.params["nlist"] == 8
    sqdist, rows = loaded.search(queries, k=5, nprobe=8)
    want_d, want_rows = _brute_force(queries, refs, 5)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(sqdist, want_d, rtol=1e-4, atol=1e-3)
    # one probed cell out of 8 searches fewer references: some true neighbours are missed
    _, rows1 = loaded.search(queries, k=5, nprobe=1)
    assert (rows1 != want_rows).any()


def test_ivfpq_recovers_near_duplicates_and_needs_enough_training_vectors():
    refs = _vectors(600)
    index = build_index(_ids(600), refs, "fp1", kind="ivfpq", nlist=4, m=8)
    assert index.params["m"] == 8
    noisy = refs[:20] + 0.01 * _vectors(20, seed=6)
    _, rows = index.search(noisy, k=1, nprobe=4)
    assert (rows[:, 0] == np.arange(20)).mean() >= 0.9  # approximate codes, near-duplicates still found
    with pytest.raises(ValueError, match=r"IVF-PQ needs at least 256 references .*got 100"):
        build_index(_ids(100), refs[:100], "fp1", kind="ivfpq", nlist=2)
    with pytest.raises(ValueError, match="m dividing the descriptor dim 16"):
        build_index(_ids(600), refs, "fp1", kind="ivfpq", nlist=2, m=5)


def test_default_nlist_keeps_enough_points_per_cell():
    assert default_nlist(10) == 1
    assert default_nlist(390) == 10
    assert default_nlist(1_000_000) == 4000


def test_load_refuses_a_folder_that_is_not_an_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing index.faiss, ids.txt, meta.json"):
        ReferenceIndex.load(tmp_path)


def test_load_refuses_ids_that_do_not_match_the_vectors(tmp_path):
    build_index(_ids(5), _vectors(5), "fp1").save(tmp_path / "idx")
    ids = tmp_path / "idx" / "ids.txt"
    ids.write_text("".join(f"{i}\n" for i in _ids(4)))  # one id missing
    with pytest.raises(ValueError, match="5 vectors of dim 16, 4 ids"):
        ReferenceIndex.load(tmp_path / "idx")
    ids.write_text("".join(f"{i}\n" for i in ["a", "b", "c", "d", "a"]))
    with pytest.raises(ValueError, match="duplicated ids, e.g. a"):
        ReferenceIndex.load(tmp_path / "idx")
