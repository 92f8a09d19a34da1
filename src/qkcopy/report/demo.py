"""`qkcopy demo`: the whole method end to end, offline, in minutes on a laptop CPU.

1. images: drawn photo-like pictures and matplotlib's sample photos (qkcopy.data.demo_images), or the user's
   folder (`images=`); with too few user photos for training too, training images are drawn ones;
2. a small benchmark from them (qkcopy.synth.make_benchmark): references, edited-copy and distractor queries,
   disjoint training images;
3. the GIST + PCA baseline and the off-the-shelf backbone baseline (qkcopy.baselines);
4. a short QK Iteration (qkcopy.train, preset configs/demo.yaml), each phase's Q/K checkpoint evaluated;
5. the results table (printed, results.json) and report.md / report.html with PR curves of every method, the
   training-loss curves and a contact sheet of retrievals by the final model (qkcopy.report).

The run directory holds images/, benchmark/, baselines/{gist,backbone}/, qk/ (a training run directory),
predictions of each QK phase under qk/, the figures, results.json and the reports.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from qkcopy.baselines.runner import BaselineOptions, run_baseline
from qkcopy.data.benchmark import Benchmark
from qkcopy.config import load_config, segment_names
from qkcopy.data.demo_images import generate_demo_images
from qkcopy.evaluation.model_eval import evaluate_model
from qkcopy.data.images import scan_images
from qkcopy.evaluation.metrics import Metrics
from qkcopy.evaluation.plots import plot_pr_curves
from qkcopy.io import atomic_write
from qkcopy.report.report import format_table, loss_curves, retrieval_sheet, write_report
from qkcopy.model.trained import load_trained
from qkcopy.data.synth import BenchmarkOptions, make_benchmark
from qkcopy.training.loop import train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoOptions:
    """Sizes of the demo. Half the queries are copies; the training preset's overrides go in `overrides`."""

    n_references: int = 200
    n_queries: int = 200
    n_train: int = 500
    n_spares: int = 40  # extra images: backgrounds of the copy-paste edits
    image_side: int = 320  # longer side of the drawn images
    seed: int = 0
    strength: str = "medium"
    config: str = "demo"  # training preset (or YAML file)
    overrides: tuple[str, ...] = ()  # key=value on the preset
    backbone_size: int = 224  # off-the-shelf baseline input S
    pca_max_train: int = 500  # training images fitting the baselines' PCAs
    workers: int = 2
    sheet_examples: int = 8


# --quick: about a quarter of the time — fewer images and steps, a smaller off-the-shelf input.
QUICK = dict(n_references=100, n_queries=100, n_train=300, backbone_size=160, pca_max_train=300,
             overrides=("schedule.steps_per_phase=15",))


def split_overrides(options: DemoOptions, overrides: list[str]) -> DemoOptions:
    """Apply `demo.<field>=value` items to `options`; every other key=value goes to the training config."""
    fields = {f.name for f in dataclasses.fields(DemoOptions)} - {"overrides"}
    changes, training = {}, []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not key.startswith("demo."):
            training.append(item)
            continue
        name = key[len("demo."):]
        if not sep or name not in fields:
            raise ValueError(f"override {item!r}: demo options are {sorted(fields)} (as demo.<name>=value)")
        changes[name] = yaml.safe_load(raw)
    return dataclasses.replace(options, **changes, overrides=(*options.overrides, *training))


@dataclass(frozen=True)
class DemoResult:
    out: Path
    rows: list[dict]
    report: Path
    seconds: float


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"demo output folder {out} exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def build_demo_benchmark(out: Path, images: Path | None, opt: DemoOptions) -> Benchmark:
    """The demo benchmark in out/benchmark, from drawn images or from the user's photos (see module doc)."""
    matched = round(opt.n_queries / 2)
    bench_opt = BenchmarkOptions(n_references=opt.n_references, n_queries=opt.n_queries, matched_fraction=0.5,
                                 n_train=opt.n_train, seed=opt.seed, strength=opt.strength)
    extra = opt.n_train + opt.n_spares
    if images is None:
        n = opt.n_references + (opt.n_queries - matched) + extra
        generate_demo_images(out / "images", n, opt.seed, opt.image_side, workers=max(opt.workers, 1))
        return make_benchmark(out / "images", out / "benchmark", None, bench_opt)
    count = len(scan_images(images))
    need = opt.n_references + opt.n_queries - matched
    if count >= need + extra:
        log.info("%d photos in %s: references, queries and training images all from them", count, images)
        return make_benchmark(images, out / "benchmark", None, bench_opt)
    if count < need:  # shrink: refs r, r/2 copies and r/2 distractors need 1.5 r photos
        refs = (2 * count) // 3
        if refs < 4:
            raise ValueError(f"{images} has {count} images; the demo needs at least 6 (or omit --images)")
        log.warning("%d photos in %s: using %d references and %d queries", count, images, refs, refs)
        bench_opt = dataclasses.replace(bench_opt, n_references=refs, n_queries=refs)
    log.info("%d photos in %s: training on %d drawn images", count, images, opt.n_train)
    generate_demo_images(out / "images", opt.n_train, opt.seed, opt.image_side, real=False,
                         workers=max(opt.workers, 1))
    return make_benchmark(images, out / "benchmark", out / "images", bench_opt)


def _baseline(method: str, bench: Benchmark, out: Path, opt: DemoOptions, dim: int) -> tuple[Metrics, float]:
    options = BaselineOptions(pca_dim=dim, pca_max_train=opt.pca_max_train, seed=opt.seed,
                              input_size=opt.backbone_size, workers=opt.workers)
    metrics = run_baseline(method, bench, out / "baselines" / method, options=options)
    seconds = json.loads((out / "baselines" / method / "summary.json").read_text())["seconds"]["total"]
    return metrics, seconds


def evaluate_checkpoint(checkpoint: Path, bench: Benchmark, workers: int = 2):
    """Q on the queries, K on the references, k = 10 search: (Predictions, Metrics)."""
    result = evaluate_model(load_trained(checkpoint), bench, workers=workers)
    return result.predictions, result.metrics


def _row(label: str, metrics: Metrics, seconds: float) -> dict:
    return dict(method=label, **metrics.as_dict(), seconds=round(seconds, 1))


def run_demo(out: str | Path, images: str | Path | None = None, options: DemoOptions = DemoOptions()) -> DemoResult:
    """Run the demo into the empty folder `out` (see the module docstring); returns the rows and the report."""
    out = Path(out)
    _check_out(out)
    cfg = load_config(options.config, list(options.overrides))
    dim = cfg.model.descriptor_dim
    start = time.perf_counter()
    stages: dict[str, float] = {}

    def lap(stage: str, since: float) -> float:
        now = time.perf_counter()
        stages[stage] = round(now - since, 1)
        return now

    bench = build_demo_benchmark(out, Path(images) if images is not None else None, options)
    tick = lap("benchmark", start)
    log.info("%s", bench.summary())
    rows, curves = [], {}
    backbone = BaselineOptions().backbone
    for method, label in (("gist", "GIST + PCA"), ("backbone", f"off-the-shelf {backbone} {options.backbone_size}px")):
        metrics, seconds = _baseline(method, bench, out, options, dim)
        rows.append(_row(label, metrics, seconds))
        curves[label] = metrics
        tick = lap(method, tick)

    qk_dir = out / "qk"
    train_start = time.time()
    train(cfg, bench.train_paths, qk_dir)
    tick = lap("qk_training", tick)
    preds = None
    started = ["init"] if (qk_dir / "checkpoints" / "init").exists() else []  # head_init pca: the start point
    for name in started + segment_names(cfg):
        checkpoint = qk_dir / "checkpoints" / name
        trained_for = (checkpoint / "state.json").stat().st_mtime - train_start  # phase end, from the file
        t0 = time.perf_counter()
        preds, metrics = evaluate_checkpoint(checkpoint, bench, options.workers)
        preds.to_csv(qk_dir / f"predictions-{name}.csv")
        label = "QK Iteration at step 0 (PCA head init)" if name == "init" else f"QK Iteration after {name}"
        rows.append(_row(label, metrics, max(trained_for, 0.0) + time.perf_counter() - t0))
        curves[label] = metrics
    tick = lap("qk_evaluation", tick)

    figures = {"Precision–recall curves": plot_pr_curves(curves, out / "pr_curves.png",
                                                          title=f"demo benchmark: {len(bench.reference_ids)} references, "
                                                                f"{len(bench.query_ids)} queries"),
               "Training loss": loss_curves(qk_dir / "train_log.jsonl", out / "loss_curves.png"),
               f"Retrievals of QK Iteration after {segment_names(cfg)[-1]} (green: correct, red: wrong, blue: the true "
               "match when not in the top 3)": retrieval_sheet(
                   dict(zip(bench.query_ids, bench.query_paths)), dict(zip(bench.reference_ids, bench.reference_paths)),
                   preds, bench.ground_truth, out / "retrievals.png", options.sheet_examples)}
    lap("figures", tick)
    seconds = time.perf_counter() - start
    notes = [f"Benchmark: {bench.summary()}.",
             f"Training: preset {options.config!r}{' with ' + ' '.join(options.overrides) if options.overrides else ''} — {cfg.model.backbone} at "
             f"{cfg.model.image_size} px, phases {' '.join(segment_names(cfg))}, "
             f"{cfg.schedule.steps_per_phase} steps each, batch {cfg.data.batch_size}.",
             *(["QK at step 0: both heads start as an exact PCA map of the backbone's features (model.head_init "
                "pca), i.e. GIST and the off-the-shelf backbone combined; the rows after it show what QK training "
                "adds."] if started else []),
             "Wall time: a baseline's whole run; a QK row's training time up to the end of that phase plus its "
             f"evaluation. Demo total {seconds:.0f} s: "
             + ", ".join(f"{stage} {s:.0f} s" for stage, s in stages.items()) + "."]
    report = write_report(out, rows, figures, title="qkcopy demo", notes=notes)
    results = json.dumps(dict(rows=rows, stages=stages, seconds=round(seconds, 1),
                              options=dataclasses.asdict(options)), indent=1)
    atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(results + "\n", encoding="utf-8"))
    log.info("demo finished in %.0f s", seconds)
    return DemoResult(out, rows, report, seconds)


def print_results(result: DemoResult) -> None:
    print(format_table(result.rows, markdown=False))
    print(f"\nreport: {result.report}  (and report.html)\ndemo wall time: {result.seconds:.0f} s")
