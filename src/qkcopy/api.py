"""The public Python API: load a trained model, embed images, build an index, search it, evaluate, train.

    import qkcopy
    model = qkcopy.load_model("runs/qk")
    index = qkcopy.build_index(model, "refs/")
    hits = qkcopy.search(model, index, "uploads/", threshold="runs/qk/eval/threshold.json")

Each function is a thin, typed entry over the library module that owns the work (named in its docstring);
heavy imports happen on first call, so `import qkcopy` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qkcopy.data.benchmark import Benchmark
    from qkcopy.model.trained import TrainedModels
    from qkcopy.evaluation.threshold import Threshold
    from qkcopy.model.inference import Embeddings
    from qkcopy.retrieval.index import ReferenceIndex
    from qkcopy.evaluation.metrics import Metrics
    from qkcopy.retrieval.search import CopySearch

Images = str | os.PathLike | Sequence[str | os.PathLike]


def _paths(images: Images) -> list[Path]:
    """A folder (scanned recursively for images) or a list of image files."""
    from qkcopy.data.images import scan_images

    if isinstance(images, (str, os.PathLike)):
        return scan_images(images)
    return [Path(p) for p in images]


def load_model(path: str | os.PathLike, device: str = "auto") -> TrainedModels:
    """A trained model (`qkcopy.model.trained.load_trained`).

    Args:
        path: a run directory (its latest checkpoint) or one checkpoint folder inside it.
        device: "auto", "cpu", "cuda", "cuda:1"…
    Returns:
        `TrainedModels`: Q for queries, K for references, gist256, the config and the fingerprint.
    Raises:
        FileNotFoundError: not a run directory. CheckpointError, ConfigError: a damaged run (one-line message).
    """
    from qkcopy.device import resolve_device
    from qkcopy.model.trained import load_trained

    return load_trained(path, str(resolve_device(device)))


def embed(model: TrainedModels, images: Images, side: str = "query", batch_size: int = 64,
          workers: int = 2) -> Embeddings:
    """Descriptors of images (`TrainedModels.describe`).

    Args:
        model: from `load_model`. images: a folder (scanned recursively) or a list of files.
        side: "query" (Q) or "reference" (K). batch_size, workers: the loader's.
    Returns:
        `Embeddings`: ids (file stems), vectors (N, 256) float32, skipped (unreadable files, also logged).
    Raises:
        ValueError: an unknown side.
    """
    return model.describe(side, _paths(images), batch_size, workers)


def build_index(model: TrainedModels, references: str | os.PathLike, out: str | os.PathLike | None = None,
                kind: str = "flat", batch_size: int = 64, workers: int = 2) -> ReferenceIndex:
    """A faiss index of a folder of reference images, described with K (`qkcopy.retrieval.index`).

    Args:
        model: from `load_model`. references: a folder of images.
        out: save the index (index.faiss, ids.txt, meta.json) into this new folder.
        kind: "flat" (exact), "ivf" or "ivfpq" (`retrieval.faiss_index`).
    Returns:
        `ReferenceIndex` (ids, the model's fingerprint, the faiss index).
    Raises:
        ValueError: no readable image, or sizes the index type cannot be trained with. FileExistsError: `out`.
    """
    from qkcopy.retrieval.index import build_index as build, index_folder

    if out is not None:
        return index_folder(model, out, references=references, kind=kind, batch_size=batch_size,
                                workers=workers)
    emb = embed(model, references, "reference", batch_size, workers)
    if not emb.ids:
        raise ValueError(f"none of the images under {references} could be read")
    return build(emb.ids, emb.vectors, model.fingerprint, kind)


def search(model: TrainedModels, index: ReferenceIndex | str | os.PathLike, images: Images, k: int = 10,
           threshold: Threshold | float | str | os.PathLike | None = None, batch_size: int = 64,
           workers: int = 2, regions: int | None = None) -> CopySearch:
    """The k nearest references of each image, described with Q (`qkcopy.retrieval.search`).

    Args:
        model: from `load_model`. index: a `ReferenceIndex` or its folder. images: a folder or a list of files.
        k: references per image. threshold: a score (≤ 0), or a threshold.json of `qkcopy eval` (or its
            folder); with one, each pair is labelled copy / not a copy (`evaluation.threshold.is_copy`).
        regions: query regions described beside each whole image (a copy inside a bigger picture; 0: the whole
            image alone); None: the model's `model.regions`, at its `region_size` and `region_margin`.
    Returns:
        `CopySearch`: matches (query, reference, score = −squared L2, is_copy, box), the queries read, the skipped.
    Raises:
        FingerprintMismatch: an index or threshold of another model. ThresholdError: a bad threshold.
        DataError: none of the images could be read.
    """
    from qkcopy.evaluation.threshold import load_threshold
    from qkcopy.retrieval.index import ReferenceIndex
    from qkcopy.retrieval.search import find_copies

    if not isinstance(index, ReferenceIndex):
        index = ReferenceIndex.load(index)
    if isinstance(threshold, (str, os.PathLike)):
        threshold = load_threshold(threshold, model.fingerprint)
    regions, margin, size = model.query_regions(regions)
    return find_copies(model, index, _paths(images), k=k, threshold=threshold, batch_size=batch_size,
                       workers=workers, regions=regions, region_margin=margin, region_size=size)


def evaluate(model: TrainedModels, benchmark: Benchmark | str | os.PathLike, k: int = 10,
             regions: int | None = None) -> Metrics:
    """ISC2021 metrics of the model on a benchmark (`qkcopy.evaluation.model_eval.evaluate_model`): Q on its
    queries, K on its references, exhaustive search.

    Args:
        model: from `load_model`. benchmark: a `Benchmark` or a folder (ours or DISC21's layout).
        k: references kept per query. regions: query regions (0: the whole image alone); None: the model's
            `model.regions`, at its `region_size` and `region_margin` (as `qkcopy eval`).
    Returns:
        `Metrics`: micro_ap, recall_at_p90, recall_at_1, the precision-recall curve.
    Raises:
        ValueError: no readable query or reference, or a benchmark folder that cannot be read.
    """
    from qkcopy.data.benchmark import Benchmark, load_benchmark
    from qkcopy.evaluation.model_eval import evaluate_model

    bench = benchmark if isinstance(benchmark, Benchmark) else load_benchmark(benchmark)
    regions, margin, size = model.query_regions(regions)
    return evaluate_model(model, bench, k, regions=regions, region_margin=margin, region_size=size).metrics


def train(data: str | os.PathLike, out: str | os.PathLike, config: str | os.PathLike = "cpu",
          overrides: Sequence[str] = (), resume: bool = False) -> list[dict]:
    """QK Iteration, or `method=simclr` / `method=moco` (`qkcopy.training.loop.train`).

    Args:
        data: a benchmark folder (trains on its train/ and evaluates after every phase) or a folder of images.
        out: the run folder. config: a preset name or a YAML file. overrides: `key=value` strings.
        resume: continue the run in `out` from its last checkpoint.
    Returns:
        The evaluation rows (one per phase; empty without a benchmark).
    Raises:
        ConfigError: a bad key or value (named). RunDirExists: `out` holds another run. DataError: too few images.
    """
    from qkcopy.config import load_config
    from qkcopy.data.benchmark import load_benchmark
    from qkcopy.data.images import scan_images
    from qkcopy.training.loop import train as train_loop

    cfg = load_config(config, list(overrides))
    root = Path(data)
    is_benchmark = (root / "references").is_dir() or (root / "train").is_dir()
    bench = load_benchmark(root) if is_benchmark else None
    paths = bench.train_paths if bench is not None else scan_images(root)
    return train_loop(cfg, paths, Path(out), bench, resume=resume)
