"""Matches of a query described by its whole image and its regions (issue 20): the best score over the regions
per reference, the winning region's box, and the verification fields (serve/verification.py) a match may gain.

Letters: k neighbours, R regions of a query (the whole image first).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qkcopy.collection import MatchRow
from qkcopy.evaluation.threshold import is_copy

MAX_REGIONS = 16  # per query, beside the whole image


@dataclass(frozen=True)
class BoxedMatch(MatchRow):
    box: tuple[int, int, int, int]  # the query region whose score this is, (x0, y0, x1, y1) in query pixels
    confidence: float | None = None  # local-feature verification's 0..1 (None: not verified; verification.py)
    quad: tuple[tuple[float, float], ...] | None = None  # a verified reference's 4 corners in query pixels


def check_regions(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= MAX_REGIONS:
        raise ValueError(f"regions must be an integer in 0..{MAX_REGIONS}, got {n!r}")
    return int(n)


def best_over_regions(found: Sequence[list[MatchRow]], boxes: np.ndarray, k: int, margin: float = 0.0,
                      threshold=None) -> list[BoxedMatch]:
    """One query's k best references by their best score over its regions (`found`: each region's k best,
    row 0 the whole image's; `margin` taken off every region's score but the whole image's, the verdict then
    taken again against `threshold`), each with the winning region's box; ties keep the earlier region, and the
    order of equal scores is the search's. Exact: a reference of the k best is among its winning region's k
    best (the margin is the same for all of a region's candidates)."""
    best: dict[int, tuple[MatchRow, int]] = {}
    for region, matches in enumerate(found):
        for m in matches:
            if region and margin:
                m = dataclasses.replace(m, score=m.score - margin, is_copy=is_copy(m.score - margin, threshold))
            if m.id not in best or m.score > best[m.id][0].score:
                best[m.id] = (m, region)
    ranked = sorted(best.values(), key=lambda mr: -mr[0].score)[:k]  # stable: the search's order among ties
    return [BoxedMatch(**vars(m), box=tuple(int(v) for v in boxes[region])) for m, region in ranked]
