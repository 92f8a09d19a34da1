import faiss
import numpy as np
import pytest

from qkcopy.data.isc_csv import GroundTruth

from qkcopy.evaluation.metrics import isc_metrics
from qkcopy.evaluation.knn import capped_search, knn_search, predictions_from_knn, search_predictions



@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    assert faiss.omp_get_max_threads() == 1
    yield
    faiss.omp_set_num_threads(before)


def brute_sqdist(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(Nq, Nr) squared L2 by a plain float64 difference."""
    return ((q[:, None, :].astype(np.float64) - r[None, :, :]) ** 2).sum(-1)


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def test_knn_search_matches_numpy_brute_force():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((37, 16)).astype(np.float32)
    r = rng.standard_normal((53, 16)).astype(np.float32)
    sqdist, index = knn_search(q, r, k=7)
    assert sqdist.shape == index.shape == (37, 7)
    assert sqdist.dtype == np.float32 and index.dtype == np.int64
    bf = brute_sqdist(q, r)
    np.testing.assert_allclose(sqdist, np.sort(bf, axis=1)[:, :7], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(bf, index, axis=1), sqdist, rtol=1e-4, atol=1e-4)
    assert (np.diff(sqdist, axis=1) >= 0).all()


def test_knn_search_clips_k_and_finds_exact_copies():
    rng = np.random.default_rng(1)
    r = rng.standard_normal((4, 8)).astype(np.float32)
    sqdist, index = knn_search(r[::-1].copy(), r, k=10)
    assert index.shape == (4, 4)
    assert index[:, 0].tolist() == [3, 2, 1, 0]
    assert np.allclose(sqdist[:, 0], 0.0, atol=1e-5) and (sqdist >= 0).all()


@pytest.mark.parametrize("q, r, k, message", [
    (np.zeros((2, 4), np.float64), np.zeros((3, 4), np.float32), 2, "queries must be a float32"),
    (np.zeros((2, 4), np.float32), np.zeros(12, np.float32), 2, r"references must be .*\(N, E\)"),
    (np.zeros((2, 4), np.float32), np.zeros((3, 5), np.float32), 2, "differ in descriptor dim"),
    (np.zeros((2, 4), np.float32), np.zeros((0, 4), np.float32), 2, "references is empty"),
    (np.array([[0, 0], [0, np.inf]], np.float32), np.zeros((3, 2), np.float32), 2, "queries row 1"),
    (np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32), 0, "k must be >= 1"),
])
def test_knn_search_rejects_bad_input(q, r, k, message):
    with pytest.raises(ValueError, match=message):
        knn_search(q, r, k)


def test_predictions_from_knn_per_query():
    sqdist = np.array([[0.5, 2.0], [1.0, 3.0]], np.float32)
    index = np.array([[2, 0], [1, -1]], np.int64)  # -1: faiss found no second neighbour
    p = predictions_from_knn(["qa", "qb"], ["r0", "r1", "r2"], sqdist, index)
    assert p.query_ids.tolist() == ["qa", "qa", "qb"]
    assert p.reference_ids.tolist() == ["r2", "r0", "r1"]
    assert p.scores.tolist() == [-0.5, -2.0, -1.0]


def test_global_cap_keeps_the_best_pairs_overall():
    rng = np.random.default_rng(2)
    q = rng.integers(-3, 4, size=(30, 6)).astype(np.float32)  # small integers: exact distances, many ties
    r = rng.integers(-3, 4, size=(40, 6)).astype(np.float32)
    sqdist, index = knn_search(q, r, k=8)
    p = predictions_from_knn(ids("q", 30), ids("r", 40), sqdist, index, max_results=50)
    assert len(p) == 50
    # reference: all k·Nq pairs, best 50 by (distance, query row, reference row)
    qq = np.repeat(np.arange(30), 8)
    rr, dd = index.ravel(), sqdist.ravel()
    keep = np.lexsort((rr, qq, dd))[:50]
    expected = {(f"q{a:03d}", f"r{b:03d}", -float(c)) for a, b, c in zip(qq[keep], rr[keep], dd[keep])}
    assert set(zip(p.query_ids.tolist(), p.reference_ids.tolist(), p.scores.tolist())) == expected
    assert p.scores.min() >= -np.sort(dd)[49]
    # no cap: every kNN pair
    assert len(predictions_from_knn(ids("q", 30), ids("r", 40), sqdist, index)) == 240


@pytest.mark.parametrize("batch_size", [None, 1, 7])
def test_capped_search_is_the_global_top_over_all_pairs(batch_size):
    rng = np.random.default_rng(3)
    q = rng.integers(-2, 3, size=(25, 5)).astype(np.float32)
    r = rng.integers(-2, 3, size=(30, 5)).astype(np.float32)
    qr, rr, dd = capped_search(q, r, max_results=40, batch_size=batch_size)
    bf = brute_sqdist(q, r)  # exact: small integers
    all_q, all_r = np.divmod(np.arange(bf.size), 30)
    keep = np.lexsort((all_r, all_q, bf.ravel()))[:40]
    assert sorted(zip(qr.tolist(), rr.tolist())) == sorted(zip(all_q[keep].tolist(), all_r[keep].tolist()))
    np.testing.assert_array_equal(dd, bf[qr, rr].astype(np.float32))
    # some query has more pairs than a 1-NN search would give: the cap is global, not per query
    assert np.bincount(qr).max() > 1


def test_capped_search_with_more_room_than_pairs():
    rng = np.random.default_rng(4)
    q, r = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    qr, rr, _ = capped_search(q, r, max_results=100)
    assert len(qr) == 15 and sorted(set(zip(qr.tolist(), rr.tolist()))) == [(a, b) for a in range(3) for b in range(5)]


def test_search_predictions_finds_noisy_copies():
    rng = np.random.default_rng(5)
    refs = rng.standard_normal((60, 32)).astype(np.float32)
    copies = (refs[:20] + 0.05 * rng.standard_normal((20, 32))).astype(np.float32)
    distractors = rng.standard_normal((10, 32)).astype(np.float32)
    q = np.concatenate([copies, distractors])
    qid, rid = ids("q", 30), ids("r", 60)
    gt = GroundTruth({qid[i]: (rid[i] if i < 20 else None) for i in range(30)})
    m = isc_metrics(search_predictions(qid, q, rid, refs, k=5), gt)
    assert m.recall_at_1 == 1.0 and m.micro_ap == pytest.approx(1.0)
    # ISC-style global cap with exactly as many results as true copies
    m = isc_metrics(search_predictions(qid, q, rid, refs, k=None, max_results=20), gt)
    assert m.n_predictions == 20 and m.micro_ap == pytest.approx(1.0)


def test_search_predictions_errors():
    v = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="differ in length"):
        search_predictions(["a"], v, ["x", "y"], v)
    with pytest.raises(ValueError, match="give k"):
        search_predictions(["a", "b"], v, ["x", "y"], v, k=None)
    with pytest.raises(ValueError, match="reference ids must be unique, x"):
        search_predictions(["a", "b"], v, ["x", "x"], v, k=1)
    with pytest.raises(ValueError, match=r"index values must lie in \[-1, 2\)"):
        predictions_from_knn(["a"], ["x", "y"], np.zeros((1, 1), np.float32), np.array([[5]]))
