"""Non-learned baselines in one harness: describe, search, evaluate and record, the same way for each method.

Methods:
  * ``gist``  — GIST 960-d (qkcopy.gist, the ISC2021 baseline's lear_gist numbers) then PCA to 256, fitted on
    the benchmark's TRAINING images only (at most `pca_max_train` of them, a seeded random subset), never on
    references or queries;
  * ``backbone`` — an off-the-shelf CNN, no training: the pretrained backbone (default EfficientNet-Lite0 with
    its ImageNet weights) on the whole image resized to S×S (as training and evaluation see it), pooled
    feature → L2-normalise → PCA to 256 (fitted like GIST's, on training images only) → L2-normalise;
  * ``pdq``, ``phash``, ``tiny`` — qkcopy.hashes (hash bits as 0/1 floats: squared L2 = Hamming distance).
Every method goes through the same exhaustive faiss L2 search (qkcopy.search, score = −squared L2) and the
ISC2021 metrics. Unreadable images are skipped and counted: a skipped query gets no prediction (its match
counts as missed), a skipped reference cannot be found.

A run directory holds: summary.json (metrics, method, options, seconds per stage, skip counts, git commit),
predictions.csv, pr_curve.png, queries.h5 and references.h5 (ISC2021 descriptor files) and, for GIST,
gist_pca.safetensors (backbone: backbone_pca.safetensors).

Letters: N images, B batch, D backbone feature dim, E descriptor dim.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from qkcopy.baselines.hashes import HASHES, hash_descriptors
from qkcopy.data.benchmark import Benchmark, load_benchmark
from qkcopy.data.images import ImageDataset, SkipLog, collate_skipping
from qkcopy.data.transforms import model_input
from qkcopy.device import resolve_device
from qkcopy.io import atomic_write_json, git_commit
from qkcopy.model.backbone import create_backbone, input_normalization
from qkcopy.model.gist256 import fit_gist256, gist_descriptors
from qkcopy.model.pca import PCA
from qkcopy.evaluation.plots import plot_pr_curves
from qkcopy.retrieval.descriptors import write_isc_h5
from qkcopy.evaluation.knn import search_predictions
from qkcopy.data.isc_csv import Predictions
from qkcopy.evaluation.metrics import Metrics, isc_metrics

log = logging.getLogger(__name__)

METHODS = ("gist", "backbone", *HASHES)
BACKBONE_OPTIONS = ("backbone", "weights", "input_size", "backbone_batch", "workers", "device")


@dataclass(frozen=True)
class BaselineOptions:
    """Settings besides the search's k / max_results. Defaults are the ISC2021 GIST baseline's."""

    pca_dim: int = 256
    pca_max_train: int = 5000  # training images used to fit the GIST PCA (seeded random subset)
    seed: int = 0  # picks that subset
    batch_size: int = 256  # GIST batch
    backbone: str = "efficientnet_lite0"  # off-the-shelf baseline: any timm name
    weights: str | None = "imagenet"  # "imagenet", a state-dict file, or None (random: tests only)
    input_size: int = 224  # S: the whole image is resized to S×S
    backbone_batch: int = 32
    workers: int = 2  # DataLoader processes decoding images for the backbone
    device: str = "auto"

    def __post_init__(self) -> None:
        if min(self.pca_dim, self.pca_max_train, self.batch_size, self.input_size, self.backbone_batch) < 1:
            raise ValueError(f"pca_dim, pca_max_train, batch sizes and input_size must be >= 1, got {self}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


def _pca_subset(train_paths: Sequence[Path], options: BaselineOptions, what: str) -> list[Path]:
    """At most `pca_max_train` training images (seeded subset, in path order), at least `pca_dim`."""
    paths = list(train_paths)
    if len(paths) > options.pca_max_train:
        picked = sorted(random.Random(options.seed).sample(range(len(paths)), options.pca_max_train))
        paths = [paths[i] for i in picked]
    if len(paths) < options.pca_dim:
        raise ValueError(f"the {what} PCA to {options.pca_dim} dims needs at least {options.pca_dim} training "
                         f"images, the benchmark has {len(paths)}; add training images or lower pca_dim")
    return paths


def fit_gist_pca(train_paths: Sequence[Path], options: BaselineOptions, skips: SkipLog) -> PCA:
    """The GIST PCA as the trainer fits it (`fit_gist256`), with this baseline's subset size and seed."""
    return fit_gist256(list(train_paths), options.pca_max_train, options.seed, options.pca_dim,
                       options.batch_size, skips)


class PooledBackbone(torch.nn.Module):
    """Pixels (B, 3, S, S) in [0, 1] → the pretrained backbone's pooled feature, L2-normalised, (B, D)."""

    def __init__(self, name: str, weights: str | None) -> None:
        super().__init__()
        self.backbone = create_backbone(name, weights).eval()
        mean, std = input_normalization(name)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (B, 3, S, S) in [0, 1], got {tuple(pixels.shape)}")
        feat = self.backbone((pixels - self.mean) / self.std).float()  # (B, D)
        return torch.nn.functional.normalize(feat, dim=1)


def backbone_features(model: PooledBackbone, paths: Sequence[Path], skips: SkipLog, options: BaselineOptions,
                      what: str) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised pooled features of the readable `paths`: (vecs (K, D) float32, kept (K,) int64)."""
    device = next(model.parameters()).device
    dataset = ImageDataset(paths, functools.partial(model_input, size=options.input_size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=options.backbone_batch, num_workers=options.workers,
                                         collate_fn=collate_skipping)
    kept, chunks, bad = [], [], []
    for indices, pixels, skipped in tqdm(loader, desc=f"backbone {what}", unit="batch", leave=False):
        bad.extend(skipped)
        if pixels is not None:
            chunks.append(model(pixels.to(device)).cpu().numpy())  # (B, D)
            kept.extend(indices.tolist())
    dataset.record_skips(bad, skips)
    width = getattr(model.backbone, "num_features", 0)
    vecs = np.concatenate(chunks) if chunks else np.zeros((0, width), np.float32)
    return vecs.astype(np.float32, copy=False), np.asarray(kept, dtype=np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)  # (N, E)


def _describe(method: str, paths: Sequence[Path], skips: SkipLog, pca: PCA | None,
              options: BaselineOptions, what: str, model: PooledBackbone | None) -> tuple[np.ndarray, np.ndarray]:
    if method in ("gist", "backbone"):
        if method == "gist":
            vecs, kept = gist_descriptors(paths, skips, options.batch_size)
        else:
            vecs, kept = backbone_features(model, paths, skips, options, what)
        if not len(vecs):
            return np.zeros((0, pca.out_dim), np.float32), kept
        return (pca.transform(vecs) if method == "gist" else _unit(pca.transform(vecs))), kept
    return hash_descriptors(method, paths, skips, desc=f"{method} {what}")


def _fit_pca(method: str, train_paths: Sequence[Path], options: BaselineOptions, skips: SkipLog,
             model: PooledBackbone | None) -> PCA:
    if method == "gist":
        return fit_gist_pca(train_paths, options, skips)
    feats, _ = backbone_features(model, _pca_subset(train_paths, options, "backbone"), skips, options, "train")
    return PCA.fit(feats, dim=options.pca_dim)


def _options_record(method: str, options: BaselineOptions) -> dict:
    """The options a method uses, for summary.json."""
    shared = ("pca_dim", "pca_max_train", "seed")
    keys = {"gist": (*shared, "batch_size"), "backbone": (*shared, *BACKBONE_OPTIONS)}.get(method, ())
    return {key: value for key, value in asdict(options).items() if key in keys}


def _write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data, sort_keys=True)


def run_baseline(method: str, benchmark: Benchmark, out_dir: str | Path, k: int | None = 10,
                 max_results: int | None = None, options: BaselineOptions = BaselineOptions()) -> Metrics:
    """Describe the benchmark's queries and references with `method`, search, evaluate, record in `out_dir`."""
    if method not in METHODS:
        raise ValueError(f"unknown baseline method {method!r}; expected one of {', '.join(METHODS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"run directory {out_dir} exists and is not empty; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    skips = {"train": SkipLog(), "queries": SkipLog(), "references": SkipLog()}
    start = tick = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        seconds[stage] = round(now - tick, 3)
        tick = now

    pca = model = None
    if method == "backbone":
        model = PooledBackbone(options.backbone, options.weights).to(resolve_device(options.device))
        lap("model")
    if method in ("gist", "backbone"):
        pca = _fit_pca(method, benchmark.train_paths, options, skips["train"], model)
        pca.save(out_dir / f"{method}_pca.safetensors")
        lap("pca_fit")
    described = {}
    for what, ids, paths in (("queries", benchmark.query_ids, benchmark.query_paths),
                             ("references", benchmark.reference_ids, benchmark.reference_paths)):
        vecs, kept = _describe(method, paths, skips[what], pca, options, what, model)
        kept_ids = [ids[i] for i in kept]
        write_isc_h5(out_dir / f"{what}.h5", kept_ids, vecs)
        described[what] = (kept_ids, vecs)
        lap(what)
    if not described["references"][0]:
        raise ValueError(f"no reference image of {benchmark.root} could be read; nothing to search")

    preds = search_predictions(*described["queries"], *described["references"], k=k, max_results=max_results)
    preds.to_csv(out_dir / "predictions.csv")
    lap("search")
    metrics = isc_metrics(preds, benchmark.ground_truth)
    lap("evaluate")
    plot_pr_curves({method: metrics}, out_dir / "pr_curve.png",
                   title=f"{method} on {benchmark.root.name or benchmark.root}")
    seconds["total"] = round(time.perf_counter() - start, 3)
    for what, log_ in skips.items():
        if log_.count:
            log_.report(log, f"{what} images")

    _write_json(out_dir / "summary.json", {
        "method": method,
        "metrics": metrics.as_dict(),
        "options": {"k": k, "max_results": max_results, **_options_record(method, options)},
        "descriptor_dim": int(described["references"][1].shape[1]),
        "pca_fingerprint": None if pca is None else pca.fingerprint(),
        "benchmark": {"root": str(benchmark.root.resolve()), "layout": benchmark.layout,
                      "queries": len(benchmark.query_ids), "references": len(benchmark.reference_ids),
                      "train": len(benchmark.train_ids), "matched": benchmark.n_matched},
        "skipped": {what: s.count for what, s in skips.items()},
        "seconds": seconds,
        "git_commit": git_commit(),
    })
    log.info("%s: µAP %.4f  R@P90 %.4f  R@1 %.4f  in %.1f s -> %s", method, metrics.micro_ap,
             metrics.recall_at_p90, metrics.recall_at_1, seconds["total"], out_dir)
    return metrics


def plot_runs(run_dirs: Sequence[str | Path], path: str | Path, title: str | None = None) -> Path:
    """One PNG with the PR curves of several run directories (re-evaluated from their predictions.csv).

    Curves are labelled by method, with the run folder's name added when two runs share a method.
    """
    curves: dict[str, Metrics] = {}
    for run in map(Path, run_dirs):
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        gt = load_benchmark(summary["benchmark"]["root"]).ground_truth
        label = summary["method"] if summary["method"] not in curves else f"{summary['method']} ({run.name})"
        while label in curves:
            label += "'"
        curves[label] = isc_metrics(Predictions.from_csv(run / "predictions.csv"), gt)
    return plot_pr_curves(curves, path, title=title)
