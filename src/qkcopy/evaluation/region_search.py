"""Scoring queries described by regions: a (query, reference) pair's score is the best over the query's regions,
and the region that won is kept (its box in query pixels).

Each region row is searched like a whole query (its k nearest references, squared L2); a region's distance
may carry a `margin` (added to every region but the whole image's), then for each query the candidate
references of all its regions are merged, each keeping its smallest distance. The k best references of a query
by that score are exactly found this way: a reference in them is within the k nearest of its winning region.
Every query still has one score per reference, so µAP and the threshold work unchanged.

Letters: Nq queries, T region rows, Nr references, E descriptor dim, k references per query, P predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from qkcopy.data.isc_csv import Predictions
from qkcopy.evaluation.knn import knn_search


@dataclass(frozen=True)
class RegionPredictions:
    predictions: Predictions  # (P,) one score per (query, reference), best over the query's regions
    boxes: np.ndarray  # (P, 4) int64: the winning region of each prediction, (x0, y0, x1, y1) in query pixels
    region: np.ndarray  # (P,) int64: the winning region's row in the region table (0-based over all T rows)

    def box_of(self, query: str, reference: str) -> tuple[int, int, int, int] | None:
        """The winning region of one pair, None when the pair is not among the predictions."""
        hit = np.flatnonzero((self.predictions.query_ids == query) & (self.predictions.reference_ids == reference))
        return tuple(int(v) for v in self.boxes[hit[0]]) if hit.size else None


def region_predictions(query_ids: Sequence[str], vectors: np.ndarray, owner: np.ndarray, boxes: np.ndarray,
                       reference_ids: Sequence[str], r_vecs: np.ndarray, k: int = 10,
                       margin: float = 0.0) -> RegionPredictions:
    """The k best references of each query by its best region (module docstring).

    Args:
        query_ids: (Nq,) ids; vectors (T, E) float32 region descriptors; owner (T,) the query row of each region,
            non-decreasing, each query's first row its whole image; boxes (T, 4) the regions in query pixels.
        reference_ids, r_vecs: (Nr,) ids and (Nr, E) float32 descriptors.
        margin: added to the squared distance of every region but the whole image (>= 0 favours the whole).
    Returns:
        `RegionPredictions`, sorted by query row then by descending score.
    """
    owner, boxes = np.asarray(owner), np.asarray(boxes)
    if owner.shape != (len(vectors),) or boxes.shape != (len(vectors), 4):
        raise ValueError(f"owner must be (T,) and boxes (T, 4) for T = {len(vectors)} regions, got "
                         f"{owner.shape} and {boxes.shape}")
    if len(owner) and (np.any(np.diff(owner) < 0) or owner[0] < 0 or owner[-1] >= len(query_ids)):
        raise ValueError(f"owner must be non-decreasing rows of the {len(query_ids)} query ids")
    if len(reference_ids) != len(r_vecs):
        raise ValueError(f"{len(reference_ids)} reference ids for {len(r_vecs)} reference vectors")
    sqdist, index = knn_search(vectors, r_vecs, k)  # (T, k) float32, (T, k) int64
    q, r, d, row = best_over_regions(owner, sqdist, index, margin)
    qids, rids = np.asarray(query_ids, dtype=str), np.asarray(reference_ids, dtype=str)
    preds = Predictions(qids[q], rids[r], -d)
    return RegionPredictions(preds, boxes[row].astype(np.int64), row.astype(np.int64))


def best_over_regions(owner: np.ndarray, sqdist: np.ndarray, index: np.ndarray,
                      margin: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge the regions' search results (sqdist (T, k), index (T, k), −1 = none) into each query's k best
    references: (query row (C,), reference row (C,), distance (C,) float64 with the margin, region row (C,)),
    sorted by query row then ascending distance (ties: lower reference row)."""
    if sqdist.ndim != 2 or index.shape != sqdist.shape or owner.shape != (len(sqdist),):
        raise ValueError(f"expected owner (T,), sqdist and index (T, k), got {owner.shape}, {sqdist.shape}, "
                         f"{index.shape}")
    first = np.r_[True, owner[1:] != owner[:-1]] if len(owner) else np.zeros(0, bool)  # (T,) whole-image rows
    sqdist = sqdist.astype(np.float64) + np.where(first, 0.0, margin)[:, None]  # (T, k)
    kk = sqdist.shape[1]
    row = np.repeat(np.arange(len(owner)), kk)  # (T*k,) region row of each candidate
    q, r, d = owner[row], index.ravel(), sqdist.ravel()
    found = r >= 0
    q, r, d, row = q[found], r[found], d[found], row[found]
    order = np.lexsort((row, d, r, q))  # per (query, reference): the smallest distance first, ties: first region
    q, r, d, row = q[order], r[order], d[order], row[order]
    best = np.r_[True, (q[1:] != q[:-1]) | (r[1:] != r[:-1])]  # (C,) first (smallest) of each pair
    q, r, d, row = q[best], r[best], d[best], row[best]
    order = np.lexsort((r, d, q))  # per query, ascending distance
    q, r, d, row = q[order], r[order], d[order], row[order]
    rank = np.arange(len(q)) - np.searchsorted(q, q, side="left")  # (C,) position within its query
    keep = rank < kk
    return q[keep], r[keep], d[keep], row[keep]
