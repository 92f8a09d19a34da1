"""The ISC2021 CSV files: ground truth (`query_id,reference_id`) and predictions (`query_id,reference_id,score`).

Letters: P predictions. Both types validate on construction (string ids, finite scores, each query listed
once in the ground truth) and write atomically; `qkcopy.evaluation.metrics` scores one against the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from qkcopy.io import atomic_write

PREDICTIONS_HEADER = "query_id,reference_id,score"
GROUND_TRUTH_HEADER = "query_id,reference_id"


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
