"""ISC2021 copy-detection metrics: micro average precision (µAP), recall at 90 % precision, recall@1.

The numbers follow the ISC2021 evaluation (facebookresearch/isc2021, `isc/metrics.py`):
  * every prediction of every query is pooled into one list and sorted by score, highest first; among equal
    scores the non-matching predictions come first (the worst possible order, so constant scores cannot help);
  * precision_i = TP_i / i and recall_i = TP_i / n_positives over that list, where n_positives counts ALL
    ground-truth pairs, so a match that was never predicted caps the reachable recall;
  * µAP = Σ_i (recall_i − recall_{i−1}) · precision_i with recall_0 = 0;
  * recall at P90 is the highest recall over cut-offs whose precision is ≥ 0.9 (0 here when none is);
  * recall@k counts ground-truth pairs whose prediction is outranked, within its query, by fewer than k other
    predictions of score ≥ its own (ties again count against it).

Letters: P predictions, Q queries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from qkcopy.data.isc_csv import GroundTruth, Predictions

log = logging.getLogger(__name__)
TARGET_PRECISION = 0.9


@dataclass(frozen=True, eq=False)
class Metrics:
    micro_ap: float
    recall_at_p90: float  # 0.0 when precision 0.9 is never reached
    threshold_at_p90: float | None  # keep scores >= this to get recall_at_p90; None if never reached
    recall_at_1: float
    recall_at_10: float
    n_predictions: int
    n_positives: int
    precision: np.ndarray  # (P,) float64, after each prediction in worst-case sorted order
    recall: np.ndarray  # (P,) float64
    thresholds: np.ndarray  # (P,) float64, the sorted scores

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "micro_ap": float(self.micro_ap),
            "recall_at_p90": float(self.recall_at_p90),
            "threshold_at_p90": None if self.threshold_at_p90 is None else float(self.threshold_at_p90),
            "recall_at_1": float(self.recall_at_1),
            "recall_at_10": float(self.recall_at_10),
            "n_predictions": int(self.n_predictions),
            "n_positives": int(self.n_positives),
        }


def isc_metrics(preds: Predictions, gt: GroundTruth) -> Metrics:
    """ISC2021 metrics of `preds` against `gt` (see the module docstring)."""
    is_true = _label(preds, gt)  # (P,) bool
    n_pos = gt.n_positives
    order = np.lexsort((is_true, -preds.scores))  # score descending, negatives first among ties
    tp = np.cumsum(is_true[order])  # (P,) int
    precision = tp / np.arange(1, len(preds) + 1)  # (P,) float64
    recall = tp / n_pos  # (P,) float64
    thresholds = preds.scores[order]
    micro_ap = float(np.sum(np.diff(recall, prepend=0.0) * precision))

    reached = precision >= TARGET_PRECISION
    if reached.any():
        best = int(np.argmax(np.where(reached, recall, -1.0)))  # first cut-off with the highest valid recall
        recall_at_p90, threshold_at_p90 = float(recall[best]), float(thresholds[best])
    else:
        recall_at_p90, threshold_at_p90 = 0.0, None

    ranks = _true_match_ranks(preds, is_true)  # (#retrieved positives,) int
    metrics = Metrics(
        micro_ap=micro_ap,
        recall_at_p90=recall_at_p90,
        threshold_at_p90=threshold_at_p90,
        recall_at_1=float(np.sum(ranks < 1) / n_pos),
        recall_at_10=float(np.sum(ranks < 10) / n_pos),
        n_predictions=len(preds),
        n_positives=n_pos,
        precision=precision,
        recall=recall,
        thresholds=thresholds,
    )
    log.info("µAP %.4f  R@P90 %.4f  R@1 %.4f  (%d predictions, %d positives)",
             metrics.micro_ap, metrics.recall_at_p90, metrics.recall_at_1, len(preds), n_pos)
    return metrics


def precision_recall_at_threshold(preds: Predictions, gt: GroundTruth, threshold: float) -> tuple[float, float, int]:
    """Precision and recall of the predictions with score >= threshold, and how many those are.

    Precision is 0.0 when nothing is retained.
    """
    is_true = _label(preds, gt)
    keep = preds.scores >= threshold
    n_kept = int(keep.sum())
    tp = int(is_true[keep].sum())
    return (tp / n_kept if n_kept else 0.0), tp / gt.n_positives, n_kept


def _label(preds: Predictions, gt: GroundTruth) -> np.ndarray:
    """(P,) bool: is each prediction a ground-truth pair? Raises on unknown queries or duplicate pairs."""
    if gt.n_positives == 0:
        raise ValueError("ground truth has no matched query, so recall and µAP are undefined")
    unknown = np.setdiff1d(np.unique(preds.query_ids), np.array(gt.queries, dtype=str))
    if unknown.size:
        raise ValueError(f"{unknown.size} predicted queries are not in the ground truth, e.g. {unknown[0]}")
    _, q_code = np.unique(preds.query_ids, return_inverse=True)  # (P,) int
    refs, r_code = np.unique(preds.reference_ids, return_inverse=True)  # (P,) int
    _, first, counts = np.unique(q_code * len(refs) + r_code, return_index=True, return_counts=True)
    if (counts > 1).any():
        i = first[counts > 1][0]
        raise ValueError(f"predictions contain {int((counts > 1).sum())} duplicate (query, reference) pairs, "
                         f"e.g. ({preds.query_ids[i]}, {preds.reference_ids[i]})")
    m = gt.matches
    return np.fromiter((m[q] == r for q, r in zip(preds.query_ids.tolist(), preds.reference_ids.tolist())),
                       dtype=bool, count=len(preds))


def _true_match_ranks(preds: Predictions, is_true: np.ndarray) -> np.ndarray:
    """Rank of each retrieved true pair within its query: how many other predictions score >= it."""
    _, query = np.unique(preds.query_ids, return_inverse=True)  # (P,) int
    order = np.lexsort((is_true, -preds.scores, query))  # by query, then score desc, negatives first
    q_sorted = query[order]
    group_start = np.searchsorted(q_sorted, q_sorted, side="left")  # (P,) first row of each row's query
    position = np.arange(len(order)) - group_start  # rank within query, worst case on ties
    return position[is_true[order]]  # one true pair per query, so only negatives are ahead of it
