"""Finding copies of new images in an indexed collection: (query, reference, score, is_copy) rows.

The images go through the Q model, the index holds K descriptors of the references, the score is −squared L2
(higher = more similar, as in the ISC2021 metric), and a pair is called a copy when its score reaches the
threshold calibrated by `qkcopy eval` (or one given by the user). The index, the threshold and the model
must come from the same trained run: a mismatch is refused.

Letters: Nq query images, k neighbours per query.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qkcopy.data.isc_csv import Predictions
from qkcopy.data.verify import verify_predictions
from qkcopy.errors import DataError
from qkcopy.evaluation.region_search import best_over_regions
from qkcopy.evaluation.threshold import Threshold, is_copy, scoring_of, threshold_score
from qkcopy.retrieval.embed_shards import image_ids
from qkcopy.retrieval.index import ReferenceIndex
from qkcopy.io import atomic_path, atomic_write_json

if TYPE_CHECKING:
    from qkcopy.model.regions import RegionEmbeddings

log = logging.getLogger(__name__)

FIELDS = ("query", "reference", "score", "is_copy", "box", "confidence")


@dataclass(frozen=True)
class SearchMatch:
    query: str
    reference: str
    score: float  # −squared L2 between the query's Q descriptor and the reference's K descriptor
    is_copy: bool | None  # None when no threshold was given
    box: tuple[int, int, int, int] | None = None  # the region that won (or the verified outline), query pixels
    confidence: float | None = None  # local-feature verification's confidence, when the pair was verified


@dataclass(frozen=True)
class CopySearch:
    matches: list[SearchMatch]  # k per query, best first within each query
    queries: list[str]  # the query ids that were searched
    skipped: list[str]  # unreadable query images
    threshold: float | None

    def copies(self) -> list[SearchMatch]:
        return [m for m in self.matches if m.is_copy]

    def summary(self) -> str:
        lines = [f"{len(self.queries)} images searched ({len(self.skipped)} unreadable skipped), "
                 f"{len(self.matches)} candidate pairs"]
        if self.threshold is None:
            lines.append("no threshold given: pairs are ranked but not labelled (pass --threshold)")
        else:
            hit = {m.query for m in self.copies()}
            lines.append(f"threshold {self.threshold:.4g}: {len(hit)} of {len(self.queries)} images are copies "
                         f"of an indexed reference ({len(self.copies())} pairs)")
            best = {}
            for m in self.copies():
                best.setdefault(m.query, m)
            lines += [f"  {m.query} → {m.reference} (score {m.score:.4g})" for m in list(best.values())[:10]]
            if len(best) > 10:
                lines.append(f"  … and {len(best) - 10} more")
        return "\n".join(lines)


def find_copies(trained, index: ReferenceIndex, paths: Sequence[Path], k: int = 10,
                threshold: Threshold | float | None = None, nprobe: int | None = None, batch_size: int = 64,
                workers: int = 2, regions: int = 0, region_margin: float = 0.0, verify=None,
                reference_paths: Mapping[str, Path] | None = None, region_size: int | None = None,
                table: RegionEmbeddings | None = None) -> CopySearch:
    """Search each image among the index's references; `trained` is a `qkcopy.model.trained.TrainedModels`.
    With `regions` > 0 each image is also described by that many proposed regions, a reference's score is the
    best over them (`qkcopy.evaluation.region_search`) and each match carries the winning box. With `verify` (a
    `qkcopy.data.verify.VerifyConfig`) and the references' files by id, each image's top `verify.k` matches are
    verified by local features and re-scored (score + bonus × confidence); a verified match's box is the copy's
    outline found by the homography. With `table` (the rows `qkcopy embed --regions` wrote, read by
    `qkcopy.retrieval.region_table.read_region_table`) its images are searched as they were described, nothing is
    described again, and `paths` (which may be empty) serve only to find the query files to verify."""
    if verify is not None and reference_paths is None:
        raise ValueError("verification needs the reference images: give their folder (--references)")
    index.check_model(trained.fingerprint, f"query descriptors of model {trained.checkpoint}")
    if isinstance(threshold, Threshold):
        threshold.check_model(trained.fingerprint)
        if not threshold.target_met:
            log.warning("this threshold did not reach precision %.2f on its benchmark (it had %.3f)",
                        threshold.target_precision, threshold.precision)
        made = scoring_of(regions, region_margin, region_size, verify.k if verify is not None else 0)
        if threshold.scoring != made:
            log.warning("this threshold was calibrated on scores made with %s, these are made with %s: copies are "
                        "labelled on another scale (calibrate with the same options)", threshold.scoring, made)
    threshold = threshold_score(threshold)
    paths = [Path(p) for p in paths]
    if not paths and table is None:
        raise ValueError("no query images given")
    if paths:
        image_ids(paths)
    if table is not None:
        emb, owner, boxes = table, table.owner, table.boxes
        missing = sorted(set(emb.ids) - {p.stem for p in paths}) if verify is not None else []
        if missing:
            raise ValueError(f"verification needs the query files of the region table: {missing[0]} (and "
                             f"{len(missing) - 1} more) not among the query images given (--images DIR)")
    elif regions:
        emb = trained.describe_regions(paths, regions, batch_size, workers, "query regions", region_size)
        owner, boxes = emb.owner, emb.boxes
    else:
        emb = trained.describe("query", paths, batch_size, workers, "queries")
        owner, boxes = np.arange(len(emb.ids)), np.zeros((len(emb.ids), 4), np.int64)
    if not emb.ids:
        if table is not None:
            raise DataError("the region table holds no images: embed a folder with images in it")
        raise DataError(f"none of the {len(paths)} query images could be read, e.g. {emb.skipped[0]}",
                        emb.skipped[0])
    sqdist, rows = index.search(emb.vectors, k, nprobe)  # (T, k), (T, k): one row per query or region
    q, r, d, row = best_over_regions(owner, sqdist, rows, region_margin)
    scores = -d  # (C,) float64
    checked = {}
    if verify is not None:
        found = Predictions(np.asarray(emb.ids)[q], np.asarray(index.ids)[r], scores)
        found, checked = verify_predictions(found, {p.stem: p for p in paths}, reference_paths, verify)
        scores = found.scores
    matches = []
    for qi, ri, si, wi in zip(q.tolist(), r.tolist(), scores.tolist(), row.tolist()):
        qid, rid = emb.ids[qi], index.ids[ri]
        v = checked.get((qid, rid))
        box = v.box if v is not None and v.box is not None and v.confidence > 0 else \
            (tuple(int(x) for x in boxes[wi]) if regions or table is not None else None)
        matches.append(SearchMatch(qid, rid, float(si), is_copy(float(si), threshold), box,
                                   None if v is None else v.confidence))
    matches.sort(key=lambda m: (emb.ids.index(m.query), -m.score))  # best first within each query
    return CopySearch(matches, emb.ids, emb.skipped, threshold)


def check_results_path(path: str | Path) -> Path:
    """Refuse, before any work, a results file that `write_matches` could not write."""
    path = Path(path)
    if path.suffix not in (".csv", ".json"):
        raise ValueError(f"results file must end in .csv or .json, got {path}")
    if path.is_dir():
        raise IsADirectoryError(f"results file {path} is a folder; give a file name ending in .csv or .json")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise NotADirectoryError(f"cannot create the folder of results file {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write results file {path}: {parent} is not writable")
    return path


def write_matches(result: CopySearch, path: str | Path) -> Path:
    """`.csv` (query,reference,score,is_copy) or `.json` (rows plus threshold and skipped files), atomically."""
    path = check_results_path(path)
    if path.suffix == ".json":
        return atomic_write_json(path, dict(threshold=result.threshold, queries=result.queries,
                                            skipped=result.skipped, matches=[asdict(m) for m in result.matches]))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for m in result.matches:
            w.writerow([m.query, m.reference, repr(m.score), "" if m.is_copy is None else int(m.is_copy),
                        "" if m.box is None else " ".join(map(str, m.box)),
                        "" if m.confidence is None else f"{m.confidence:.4f}"])
    return path

