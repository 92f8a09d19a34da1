"""A copy-detection benchmark on disk: references, queries, training images and the ground truth.

Two layouts are read, with ids = file stems:

- qkcopy's own (what `make_benchmark` in `qkcopy.data.synth` writes)::

      references/R000000.jpg ...   queries/Q00000.jpg ...   train/T000000.jpg ...
      ground_truth.csv             (query_id,reference_id; an empty reference = no copy)
      manifest.json                (how the benchmark was made)

- DISC21 as downloaded (Douze et al. 2021, "The 2021 Image Similarity Dataset and Challenge"), unchanged.
  Folders are found by name, the first candidate present wins; images are searched recursively, so the
  zip parts' inner `images/<split>/` folders and several `references_N` / `train_N` parts are fine:

      queries      dev_queries/, dev_queries_*/, queries/, images/queries/, query_images/
                   (split="final": final_queries/, final_queries_*/, images/final_queries/)
      references   references/, references_*/, images/references/, reference_images/
      train        train/, train_*/, images/train/, training_images/, training/   (optional)
      ground truth dev_ground_truth.csv, public_ground_truth.csv, list_files/public_ground_truth.csv,
                   list_files/dev_ground_truth.csv, ground_truth.csv
                   (split="final": final_ground_truth.csv, list_files/final_ground_truth.csv)

  DISC21's dev ground truth covers 25,000 of the 50,000 dev queries (4,991 of them are copies, about 1/5);
  only the queries the ground truth lists are evaluated, so the others are left out of `query_ids`.
"""

from __future__ import annotations

import json

import logging
from dataclasses import dataclass
from pathlib import Path

from qkcopy.data.images import scan_images
from qkcopy.data.isc_csv import GroundTruth

log = logging.getLogger(__name__)

QUERY_DIRS = {
    "dev": ("queries", "dev_queries", "dev_queries_*", "images/queries", "query_images"),
    "final": ("final_queries", "final_queries_*", "images/final_queries"),
}
REFERENCE_DIRS = ("references", "references_*", "images/references", "reference_images")
TRAIN_DIRS = ("train", "train_*", "images/train", "training_images", "training")
GROUND_TRUTH_FILES = {
    "dev": ("ground_truth.csv", "dev_ground_truth.csv", "public_ground_truth.csv",
            "list_files/public_ground_truth.csv", "list_files/dev_ground_truth.csv"),
    "final": ("final_ground_truth.csv", "list_files/final_ground_truth.csv"),
}
MANIFEST = "manifest.json"
GROUND_TRUTH = "ground_truth.csv"


@dataclass(frozen=True, eq=False)
class Benchmark:
    """Image ids and files of one benchmark. Paths line up with ids; ground truth covers every query."""

    root: Path
    query_ids: tuple[str, ...]
    query_paths: tuple[Path, ...]
    reference_ids: tuple[str, ...]
    reference_paths: tuple[Path, ...]
    train_ids: tuple[str, ...]
    train_paths: tuple[Path, ...]
    ground_truth: GroundTruth
    layout: str  # "qkcopy" (has manifest.json) or "disc21"

    def __post_init__(self) -> None:
        for what in ("query", "reference", "train"):
            ids, paths = getattr(self, f"{what}_ids"), getattr(self, f"{what}_paths")
            if len(ids) != len(paths):
                raise ValueError(f"{len(ids)} {what} ids for {len(paths)} {what} paths")

    @property
    def n_matched(self) -> int:
        return self.ground_truth.n_positives

    def summary(self) -> str:
        return (f"{self.root} ({self.layout}): {len(self.reference_ids)} references, {len(self.query_ids)} "
                f"queries ({self.n_matched} matched), {len(self.train_ids)} training images")


def _find_dirs(root: Path, candidates: tuple[str, ...]) -> list[Path]:
    """Folders of the first candidate pattern that names at least one folder under `root`."""
    for pattern in candidates:
        found = sorted(p for p in root.glob(pattern) if p.is_dir())
        if found:
            return found
    return []


def _images_by_id(folders: list[Path], what: str) -> dict[str, Path]:
    """id (file stem) → path over all images under `folders`; duplicate ids are an error."""
    by_id: dict[str, Path] = {}
    for folder in folders:
        for path in scan_images(folder):
            if path.stem in by_id:
                raise ValueError(f"{what} id {path.stem} names two files: {by_id[path.stem]} and {path}")
            by_id[path.stem] = path
    return by_id


def _missing(ids, known: dict[str, Path]) -> list[str]:
    return sorted({i for i in ids if i not in known})


def load_benchmark(root: str | Path, split: str = "dev") -> Benchmark:
    """Read a benchmark in qkcopy's layout or a DISC21 download (see the module docstring).

    `split` picks DISC21's query set ("dev" or "final"); qkcopy benchmarks have only "dev".
    Raises FileNotFoundError for a missing folder or ground-truth file and ValueError when the ground
    truth names an id with no image file.
    """
    root = Path(root)
    if split not in QUERY_DIRS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(QUERY_DIRS)}")
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark folder {root} does not exist")
    layout = "qkcopy" if (root / MANIFEST).is_file() else "disc21"

    folders = {}
    for what, candidates in (("query", QUERY_DIRS[split]), ("reference", REFERENCE_DIRS)):
        folders[what] = _find_dirs(root, candidates)
        if not folders[what]:
            raise FileNotFoundError(f"{root} has no {what} folder; looked for {', '.join(candidates)}")
    gt_path = next((root / c for c in GROUND_TRUTH_FILES[split] if (root / c).is_file()), None)
    if gt_path is None:
        raise FileNotFoundError(f"{root} has no ground-truth file; looked for "
                                f"{', '.join(GROUND_TRUTH_FILES[split])} (query_id,reference_id rows)")
    queries = _images_by_id(folders["query"], "query")
    references = _images_by_id(folders["reference"], "reference")
    train_dirs = _find_dirs(root, TRAIN_DIRS)
    train = _images_by_id(train_dirs, "train") if train_dirs else {}
    if not train_dirs:
        log.warning("%s has no training-image folder (looked for %s)", root, ", ".join(TRAIN_DIRS))

    gt = GroundTruth.from_csv(gt_path)
    for what, ids, known in (("query", gt.queries, queries),
                             ("reference", [r for _, r in gt.pairs], references)):
        missing = _missing(ids, known)
        if missing:
            raise ValueError(f"{gt_path} names {len(missing)} {what} id(s) with no image file under "
                             f"{', '.join(map(str, folders[what]))}, e.g. {', '.join(missing[:5])}")
    overlap = sorted(set(train) & (set(references) | set(gt.queries)))
    if overlap:
        raise ValueError(f"{root}: ids {', '.join(overlap[:5])} are both training images and "
                         "references/queries; training images must be disjoint from the evaluation set")
    unlisted = len(queries) - len(gt.queries)
    if unlisted:
        log.info("%s: %d query images are not in %s and are left out", root, unlisted, gt_path.name)

    query_ids = tuple(sorted(gt.queries))
    reference_ids = tuple(sorted(references))
    train_ids = tuple(sorted(train))
    bench = Benchmark(
        root=root,
        query_ids=query_ids,
        query_paths=tuple(queries[i] for i in query_ids),
        reference_ids=reference_ids,
        reference_paths=tuple(references[i] for i in reference_ids),
        train_ids=train_ids,
        train_paths=tuple(train[i] for i in train_ids),
        ground_truth=gt,
        layout=layout,
    )
    log.info("benchmark %s", bench.summary())
    return bench


def reference_sources(benchmark: Path) -> tuple[str, ...]:
    """The sha256 prefixes of the photos a benchmark made by `make_benchmark` took as references (its manifest)."""
    path = Path(benchmark) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{benchmark} has no {MANIFEST}: give a benchmark made by `qkcopy make-benchmark`")
    try:
        refs = json.loads(path.read_text(encoding="utf-8"))["references"]
        return tuple(r["sha256"] for r in refs)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: damaged manifest ({type(err).__name__}: {err}); make the benchmark again") from None
