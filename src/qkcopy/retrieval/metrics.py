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
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np
from qkcopy.io import atomic_write

log = logging.getLogger(__name__)

PREDICTIONS_HEADER = "query_id,reference_id,score"
GROUND_TRUTH_HEADER = "query_id,reference_id"
TARGET_PRECISION = 0.9


def _as_id_array(name: str, ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.asarray(arr, dtype=str).reshape(arr.shape)
    if arr.dtype.kind == "O" and all(isinstance(x, str) for x in arr.ravel()):
        arr = arr.astype(str)
    if arr.dtype.kind != "U":
        raise ValueError(f"{name} must hold strings, got dtype {arr.dtype}")
    return arr


@dataclass(frozen=True, eq=False)
class Predictions:
    """Scored (query, reference) pairs; a higher score means more likely a copy."""

    query_ids: np.ndarray  # (P,) str
    reference_ids: np.ndarray  # (P,) str
    scores: np.ndarray  # (P,) float64

    def __post_init__(self) -> None:
        q = _as_id_array("query_ids", self.query_ids)
        r = _as_id_array("reference_ids", self.reference_ids)
        s = np.asarray(self.scores, dtype=np.float64)
        for name, arr in (("query_ids", q), ("reference_ids", r), ("scores", s)):
            if arr.ndim != 1:
                raise ValueError(f"Predictions.{name} must be 1-D (P,), got shape {arr.shape}")
        if not len(q) == len(r) == len(s):
            raise ValueError(f"Predictions arrays differ in length: {len(q)} query_ids, "
                             f"{len(r)} reference_ids, {len(s)} scores")
        bad = np.flatnonzero(~np.isfinite(s))
        if bad.size:
            i = bad[0]
            raise ValueError(f"{bad.size} non-finite scores, first ({q[i]}, {r[i]}) = {s[i]}")
        object.__setattr__(self, "query_ids", q)
        object.__setattr__(self, "reference_ids", r)
        object.__setattr__(self, "scores", s)

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> Predictions:
        """Read `query_id,reference_id,score` rows (header optional, as in ISC2021 submissions)."""
        q, r, s = [], [], []
        for lineno, fields in _read_rows(path, PREDICTIONS_HEADER):
            if len(fields) != 3:
                raise ValueError(f"{path}:{lineno}: expected query_id,reference_id,score, got {fields}")
            try:
                s.append(float(fields[2]))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: score {fields[2]!r} is not a number") from None
            q.append(fields[0])
            r.append(fields[1])
        return cls(np.array(q, dtype=str), np.array(r, dtype=str), np.array(s, dtype=np.float64))

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write with a header; scores use the shortest repr that reads back to the same float64."""
        _check_csv_ids(self.query_ids, self.reference_ids)
        rows = (f"{q},{r},{s!r}\n" for q, r, s in zip(self.query_ids, self.reference_ids, self.scores.tolist()))
        _atomic_write_lines(path, PREDICTIONS_HEADER + "\n", rows)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Every evaluated query, mapped to its one true reference, or to None when it has no copy."""

    matches: Mapping[str, str | None]

    def __post_init__(self) -> None:
        clean: dict[str, str | None] = {}
        for q, r in self.matches.items():
            if not isinstance(q, str) or not q:
                raise ValueError(f"ground-truth query id must be a non-empty string, got {q!r}")
            if r is not None and (not isinstance(r, str) or not r):
                raise ValueError(f"ground-truth reference of {q} must be a non-empty string or None, got {r!r}")
            clean[q] = r
        object.__setattr__(self, "matches", MappingProxyType(clean))

    @property
    def queries(self) -> tuple[str, ...]:
        return tuple(self.matches)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(q, r) for q, r in self.matches.items() if r is not None]

    @property
    def n_positives(self) -> int:
        return sum(r is not None for r in self.matches.values())

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> GroundTruth:
        """Read `query_id,reference_id` rows; an empty reference means the query has no copy.

        This is the layout of DISC21's public_ground_truth.csv (header optional).
        """
        matches: dict[str, str | None] = {}
        for lineno, fields in _read_rows(path, GROUND_TRUTH_HEADER):
            if len(fields) != 2 or not fields[0]:
                raise ValueError(f"{path}:{lineno}: expected query_id,reference_id, got {fields}")
            q, r = fields
            if q in matches:
                raise ValueError(f"{path}:{lineno}: query {q} is listed twice")
            matches[q] = r or None
        return cls(matches)

    def to_csv(self, path: str | os.PathLike) -> None:
        _check_csv_ids(list(self.matches), [r for r in self.matches.values() if r is not None])
        rows = (f"{q},{r or ''}\n" for q, r in self.matches.items())
        _atomic_write_lines(path, GROUND_TRUTH_HEADER + "\n", rows)


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


def evaluate(preds: Predictions, gt: GroundTruth) -> Metrics:
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


def _read_rows(path: str | os.PathLike, header: str):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such CSV file: {path}")
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line or (lineno == 1 and line == header):
                continue
            yield lineno, line.split(",")


def _check_csv_ids(*id_lists) -> None:
    for ids in id_lists:
        for x in ids:
            if "," in x or "\n" in x or not x:
                raise ValueError(f"id {x!r} cannot be written to CSV (empty, or holds a comma or newline)")


def _atomic_write_lines(path: str | os.PathLike, header: str, rows) -> None:
    atomic_write(path, header + "".join(rows))
