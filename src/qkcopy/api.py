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
    """A trained run directory (its latest checkpoint) or one checkpoint inside it: Q, K, gist256
    (`qkcopy.model.trained.load_trained`). device: "auto", "cpu", "cuda", "cuda:1"…"""
    from qkcopy.device import resolve_device
    from qkcopy.model.trained import load_trained

    return load_trained(path, str(resolve_device(device)))


def embed(model: TrainedModels, images: Images, side: str = "query", batch_size: int = 64,
          workers: int = 2) -> Embeddings:
    """Descriptors (N, 256) float32 of `images` with Q (side "query") or K (side "reference"); ids are file
    stems; unreadable files are skipped and listed (`TrainedModels.describe`)."""
    return model.describe(side, _paths(images), batch_size, workers)


def build_index(model: TrainedModels, references: str | os.PathLike, out: str | os.PathLike | None = None,
                kind: str = "flat", batch_size: int = 64, workers: int = 2) -> ReferenceIndex:
    """A faiss index of a folder of reference images, embedded with K ("flat", "ivf" or "ivfpq");
    saved to `out` when given (`qkcopy.retrieval.index`)."""
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
           workers: int = 2) -> CopySearch:
    """The k nearest references of each image (embedded with Q), each pair labelled copy / not a copy when a
    threshold is given: a number, or the threshold.json of `qkcopy eval` (`qkcopy.retrieval.search`)."""
    from qkcopy.evaluation.threshold import load_threshold
    from qkcopy.retrieval.index import ReferenceIndex
    from qkcopy.retrieval.search import find_copies

    if not isinstance(index, ReferenceIndex):
        index = ReferenceIndex.load(index)
    if isinstance(threshold, (str, os.PathLike)):
        threshold = load_threshold(threshold, model.fingerprint)
    return find_copies(model, index, _paths(images), k=k, threshold=threshold, batch_size=batch_size,
                       workers=workers)


def evaluate(model: TrainedModels, benchmark: Benchmark | str | os.PathLike, k: int = 10) -> Metrics:
    """ISC2021 µAP, recall at precision 0.9 and recall@1 of the model on a benchmark folder (ours or DISC21):
    Q on its queries, K on its references, exhaustive search (`qkcopy.evaluation.model_eval.evaluate_model`)."""
    from qkcopy.data.benchmark import Benchmark, load_benchmark
    from qkcopy.evaluation.model_eval import evaluate_model

    bench = benchmark if isinstance(benchmark, Benchmark) else load_benchmark(benchmark)
    return evaluate_model(model, bench, k).metrics


def train(data: str | os.PathLike, out: str | os.PathLike, config: str | os.PathLike = "cpu",
          overrides: Sequence[str] = (), resume: bool = False) -> list[dict]:
    """QK Iteration (or `method=simclr` / `method=moco`) from a preset or YAML file plus key=value overrides.
    `data`: a benchmark folder (trains on its train/ and evaluates after every phase) or a folder of training
    images. Returns the evaluation rows (`qkcopy.training.loop.train`)."""
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
