"""Descriptor-track matching: exhaustive L2 search of query descriptors among reference descriptors (faiss).

Two ways to turn distances into ISC2021 predictions (score = −squared L2, higher = more similar):
  * k per query: the k nearest references of every query (ISC2021 `--knn k`);
  * a global cap: the `max_results` closest (query, reference) pairs overall, however many fall on one query.
    This is how the ISC2021 descriptor track scored submissions (range search capped at 500,000 results).
    `capped_search` does it exactly; `predictions_from_knn(..., max_results=)` applies the same cap to a kNN
    result, which equals it as long as no query has more than k pairs among the kept ones.
Ties at the cap are broken deterministically: lower query row first, then lower reference row.

Letters: Nq queries, Nr references, E descriptor dim, k neighbours per query, P predictions.
"""

from __future__ import annotations

import logging
from typing import Sequence

import faiss
import numpy as np
from tqdm import tqdm

from qkcopy.data.isc_csv import Predictions

log = logging.getLogger(__name__)

ISC_MAX_RESULTS = 500_000  # the ISC2021 descriptor track kept this many pairs
_PAIRS_PER_BATCH = 1 << 22  # range-search batch size is chosen to return at most this many raw pairs


def knn_search(queries: np.ndarray, references: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive k-nearest-neighbour search in squared L2; k is clipped to Nr.

    Returns sqdist (Nq, k) float32, ascending per row, and index (Nq, k) int64 rows of `references`.
    """
    _check_pair(queries, references)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, len(references))
    index = faiss.IndexFlatL2(references.shape[1])
    index.add(np.ascontiguousarray(references))
    log.debug("kNN search: %d queries x %d references, E=%d, k=%d", len(queries), len(references),
              references.shape[1], k)
    sqdist, idx = index.search(np.ascontiguousarray(queries), k)  # (Nq, k) float32, (Nq, k) int64
    return np.maximum(sqdist, 0.0), idx.astype(np.int64)


def capped_search(queries: np.ndarray, references: np.ndarray,
                  max_results: int = ISC_MAX_RESULTS,
                  batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `max_results` closest (query, reference) pairs overall, by range search with a shrinking radius.

    Queries go `batch_size` at a time (default: about 4M raw pairs per batch). Returns (query_row (P,) int64,
    reference_row (P,) int64, sqdist (P,) float32), sorted by query row and then by distance;
    P = min(max_results, Nq * Nr).
    """
    _check_pair(queries, references)
    if max_results < 1:
        raise ValueError(f"max_results must be >= 1, got {max_results}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    index = faiss.IndexFlatL2(references.shape[1])
    index.add(np.ascontiguousarray(references))
    batch = batch_size or max(1, _PAIRS_PER_BATCH // len(references))
    radius = float(np.finfo(np.float32).max)  # faiss keeps d < radius: nothing is filtered at first
    q_rows, r_rows, dists = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0, np.float32)]
    n_held = 0
    for start in tqdm(range(0, len(queries), batch), desc="capped search", unit="batch", disable=None):
        lims, d, i = index.range_search(np.ascontiguousarray(queries[start:start + batch]), radius)
        q_rows.append(start + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64))))
        r_rows.append(i.astype(np.int64))
        dists.append(np.maximum(d, 0.0))
        n_held += len(d)
        if n_held > 2 * max_results:  # prune to the best max_results; later pairs must beat the worst kept
            q, r, d = _best(np.concatenate(q_rows), np.concatenate(r_rows), np.concatenate(dists), max_results)
            q_rows, r_rows, dists, n_held = [q], [r], [d], len(d)
            radius = float(np.nextafter(d.max(), np.float32(np.inf)))  # ties may still enter
    q, r, d = _best(np.concatenate(q_rows), np.concatenate(r_rows), np.concatenate(dists), max_results)
    log.info("capped search kept %d pairs for %d queries (max_results=%d)", len(d), len(queries), max_results)
    return q, r, d


def predictions_from_knn(query_ids: Sequence[str], reference_ids: Sequence[str], sqdist: np.ndarray,
                         index: np.ndarray, max_results: int | None = None) -> Predictions:
    """Predictions with score −sqdist from a kNN result; entries with index −1 (no neighbour) are dropped.

    With `max_results`, only the max_results best pairs overall are kept (the ISC2021 global cap).
    """
    sqdist, index = np.asarray(sqdist), np.asarray(index)
    if sqdist.ndim != 2 or sqdist.dtype.kind != "f" or index.shape != sqdist.shape or index.dtype.kind not in "iu":
        raise ValueError(f"expected sqdist (Nq, k) float and index (Nq, k) int, got {sqdist.shape} "
                         f"{sqdist.dtype} and {index.shape} {index.dtype}")
    if len(query_ids) != len(sqdist):
        raise ValueError(f"{len(query_ids)} query ids for {len(sqdist)} rows of sqdist (Nq, k)")
    nq, k = sqdist.shape
    if index.size and (index.min() < -1 or index.max() >= len(reference_ids)):
        raise ValueError(f"index values must lie in [-1, {len(reference_ids)}), "
                         f"got [{index.min()}, {index.max()}]")
    found = index.ravel() >= 0  # (Nq*k,) bool
    q = np.repeat(np.arange(nq, dtype=np.int64), k)[found]
    r = index.ravel()[found].astype(np.int64)
    d = sqdist.ravel()[found]
    if max_results is not None:
        if max_results < 1:
            raise ValueError(f"max_results must be >= 1 or None, got {max_results}")
        q, r, d = _best(q, r, d, max_results)
    return _predictions(query_ids, reference_ids, q, r, d)


def search_predictions(query_ids: Sequence[str], q_vecs: np.ndarray, reference_ids: Sequence[str],
                       r_vecs: np.ndarray, k: int | None = 10, max_results: int | None = None) -> Predictions:
    """Search and score in one call.

    k given: k nearest references per query, then the global cap if max_results is given too.
    k=None: the exact ISC2021 descriptor-track matching, `capped_search` with max_results.
    """
    if len(query_ids) != len(q_vecs) or len(reference_ids) != len(r_vecs):
        raise ValueError(f"ids and vectors differ in length: {len(query_ids)} query ids for {len(q_vecs)} "
                         f"vectors, {len(reference_ids)} reference ids for {len(r_vecs)} vectors")
    if k is not None:
        sqdist, index = knn_search(q_vecs, r_vecs, k)
        return predictions_from_knn(query_ids, reference_ids, sqdist, index, max_results)
    if max_results is None:
        raise ValueError("give k (neighbours per query), max_results (global cap), or both")
    return _predictions(query_ids, reference_ids, *capped_search(q_vecs, r_vecs, max_results))


def _best(q: np.ndarray, r: np.ndarray, d: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the n smallest distances (ties: lower q, then lower r), returned sorted by (q, d, r)."""
    if len(d) > n:
        keep = np.lexsort((r, q, d))[:n]
        q, r, d = q[keep], r[keep], d[keep]
    order = np.lexsort((r, d, q))
    return q[order], r[order], d[order]


def _predictions(query_ids, reference_ids, q: np.ndarray, r: np.ndarray, d: np.ndarray) -> Predictions:
    qids = np.asarray(query_ids, dtype=str)
    rids = np.asarray(reference_ids, dtype=str)
    for name, ids in (("query", qids), ("reference", rids)):
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{name} ids must be unique, {uniq[counts > 1][0]} appears {counts.max()} times")
    return Predictions(qids[q], rids[r], -d.astype(np.float64))


def _check_pair(queries: np.ndarray, references: np.ndarray) -> None:
    for name, x in (("queries", queries), ("references", references)):
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype != np.float32:
            raise ValueError(f"{name} must be a float32 array of shape (N, E), got "
                             f"{getattr(x, 'shape', type(x).__name__)} {getattr(x, 'dtype', '')}")
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        if bad.size:
            raise ValueError(f"{name} row {bad[0]} has non-finite values ({bad.size} such rows)")
    if queries.shape[1] != references.shape[1]:
        raise ValueError(f"queries (Nq, {queries.shape[1]}) and references (Nr, {references.shape[1]}) "
                         "differ in descriptor dim E")
    if len(references) == 0:
        raise ValueError("references is empty (0, E): nothing to search")
