"""Calibrating a trained model on a benchmark: ISC2021 metrics, a decision threshold, score normalisation.

`calibrate` embeds the benchmark's queries with Q and references with K, takes the k nearest references of
each query (score = −squared L2, as in the metric) and measures µAP, recall at precision 0.9 and recall@1.
The lowest score at which the 95 % lower confidence bound of precision still reaches 0.9 (rule "lower-bound",
the default; rule "point": where precision itself reaches 0.9) becomes `threshold.json`, so that `qkcopy
search` can answer "copy / not a copy" for new images: pairs scoring at or above it are called copies. When no
cut-off's bound reaches 0.9 the point rule is used; when the benchmark never reaches precision 0.9, the
threshold of the best precision reached is saved instead, flagged `target_met: false`. The file also records
the precision measured with each edit family left out of the calibration (`qkcopy.evaluation.transfer`).

Score normalisation (optional, reported beside the raw numbers). The ISC2021 baselines
(facebookresearch/isc2021, scripts/score_normalization.py) subtract from each query's inner-product scores
β times its similarity to its n-th nearest neighbour in a background set of training images (the script's
default β is 1; its docs run n = 10, β = 2). Written for squared L2 distances d² — the same thing up to an
affine map when descriptors have unit norm, since ⟨q, r⟩ = 1 − d²/2 — that is

    score'(q, r) = −d²(q, r) + β · d²(q, b_n(q)),   b_n(q) = the n-th nearest background image of q.

With β = 1 (our default) the score is a margin: positive when r is closer to q than q's n-th background
neighbour. A query whose neighbourhood is crowded is penalised; an isolated one gains. qkcopy descriptors
are not unit-norm (gist256 plus a residual), so β does not carry over from unit-norm descriptors: on the
1,000-query dev benchmark with the untrained model, β = 1 raised µAP from 0.151 to 0.246 and β = 2 lowered
it to 0.025 (2,000 background images, n = 10).
The threshold in threshold.json is always for raw scores (what `qkcopy search` computes).

Letters: Nq queries, Nb background images, E descriptor dim, P predictions.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np

from qkcopy.data.isc_csv import Predictions

from qkcopy.evaluation.metrics import Metrics, isc_metrics, precision_recall_at_threshold
from qkcopy.evaluation.per_family import per_family_metrics, query_families
from qkcopy.evaluation.threshold import Threshold, choose_threshold, save_threshold, scoring_of
from qkcopy.evaluation.transfer import family_transfer, pooled, quiet_metrics
from qkcopy.io import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

def background_sqdist(queries: np.ndarray, background: np.ndarray, n: int = 10) -> np.ndarray:
    """d² from each query to its n-th nearest background descriptor (n clipped to Nb). (Nq,) float32."""
    for name, x in (("queries", queries), ("background", background)):
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype != np.float32:
            raise ValueError(f"{name} must be float32 (N, E), got {getattr(x, 'shape', x)} {getattr(x, 'dtype', '')}")
    if queries.shape[1] != background.shape[1] or len(background) == 0:
        raise ValueError(f"background (Nb, E) must be non-empty with E = {queries.shape[1]}, got {background.shape}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    index = faiss.IndexFlatL2(background.shape[1])
    index.add(np.ascontiguousarray(background))
    n = min(n, len(background))
    sqdist, _ = index.search(np.ascontiguousarray(queries), n)  # (Nq, n) ascending
    return np.maximum(sqdist[:, -1], 0.0)


def normalize_scores(preds: Predictions, query_ids: list[str], bg_sqdist: np.ndarray, beta: float) -> Predictions:
    """score' = score + β · d²(q, b_n(q)) for each prediction (score = −d²(q, r))."""
    if bg_sqdist.shape != (len(query_ids),):
        raise ValueError(f"bg_sqdist must be (Nq,) = ({len(query_ids)},), got {bg_sqdist.shape}")
    per_query = dict(zip(query_ids, bg_sqdist.astype(np.float64).tolist()))
    missing = set(preds.query_ids.tolist()) - per_query.keys()
    if missing:
        raise ValueError(f"{len(missing)} predicted queries have no background distance, e.g. {min(missing)}")
    shift = np.fromiter((per_query[q] for q in preds.query_ids.tolist()), np.float64, len(preds))  # (P,)
    return Predictions(preds.query_ids, preds.reference_ids, preds.scores + beta * shift)


@dataclass(frozen=True)
class Calibration:
    metrics: Metrics  # raw scores
    normalized: Metrics | None  # with background score normalisation, when asked for
    threshold: Threshold
    out: Path  # predictions.csv, summary.json, pr_curve.png, threshold.json
    families: list = field(default_factory=list)  # transfer.FamilyTransfer: each edit family left out in turn
    heldout: dict | None = None  # the threshold on --heldout-benchmark: precision, recall, flagged, µAP
    per_family: dict = field(default_factory=dict)  # edit family → µAP, recall@1, copies


def calibrate(trained, benchmark, out: str | Path, k: int = 10, normalize: bool = False, beta: float = 1.0,
              n_background: int = 10, max_background: int | None = None, batch_size: int = 64,
              workers: int = 2, rule: str = "lower-bound", heldout=None, regions: int = 0,
              region_margin: float = 0.0, verify=None, region_size: int | None = None) -> Calibration:
    """Evaluate `trained` (a `qkcopy.model.trained.TrainedModels`) on `benchmark` and write the calibration to `out`;
    `heldout`: a second benchmark the threshold is checked on (`qkcopy.evaluation.transfer`); `regions`: query
    regions scored best-of (`evaluate_model`), the threshold then holds for scores searched with as many;
    `verify` (a `qkcopy.data.verify.VerifyConfig`): the top candidates re-scored by local features, the threshold
    calibrated on those final scores."""
    from qkcopy.evaluation.model_eval import evaluate_model
    from qkcopy.evaluation.plots import plot_pr_curves

    if not benchmark.query_paths or benchmark.ground_truth.n_positives == 0:  # before any embedding
        raise ValueError(f"{benchmark.root}: the ground truth lists {len(benchmark.query_paths)} queries, "
                         f"{benchmark.ground_truth.n_positives} of them copies; calibrating needs at least one "
                         "query that is a copy of a reference — check its ground-truth CSV")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate_model(trained, benchmark, k, batch_size, workers, regions, region_margin, verify, region_size)
    queries, refs, preds, metrics = result.queries, result.references, result.predictions, result.metrics
    preds.to_csv(out / "predictions.csv")
    if result.regions is not None:
        _write_boxes(result.regions, out / "regions.csv")
    if result.verified is not None:
        _write_verified(result.verified, out / "verification.csv")
    threshold = choose_threshold(metrics, preds, benchmark.ground_truth, trained.fingerprint, k, str(benchmark.root),
                                 rule)
    threshold = replace(threshold, scoring=scoring_of(regions, region_margin, region_size, verify.k if verify else 0))
    families, per_family = _family_transfer(benchmark, preds, threshold.rule)
    if families:
        threshold = replace(threshold, unfamiliar_precision=pooled(families)[0])
    save_threshold(threshold, out / "threshold.json")
    summary = dict(benchmark=str(benchmark.root), fingerprint=trained.fingerprint, checkpoint=str(trained.checkpoint),
                   k=k, n_queries=len(queries.ids), n_references=len(refs.ids),
                   skipped=queries.skipped + refs.skipped, raw=metrics.as_dict(), threshold=asdict(threshold),
                   families_left_out=[asdict(f) for f in families], families=per_family,
                   regions=regions, region_margin=region_margin, region_size=region_size,
                   verify=None if verify is None else asdict(verify))
    held = None
    if heldout is not None:
        other = evaluate_model(trained, heldout, k, batch_size, workers, regions, region_margin, verify,
                               region_size)
        precision, recall, flagged = precision_recall_at_threshold(other.predictions, heldout.ground_truth,
                                                                   threshold.score)
        held = summary["heldout"] = dict(benchmark=str(heldout.root), precision=precision, recall=recall,
                                         flagged=flagged, micro_ap=other.metrics.micro_ap)
    normalized = None
    if normalize:
        paths = list(benchmark.train_paths)[:max_background]
        if not paths:
            raise ValueError(f"{benchmark.root} has no training images to use as the normalisation background")
        background = trained.describe("reference", paths, batch_size, workers, "background")
        bg_sqdist = background_sqdist(queries.vectors, background.vectors, n_background)
        norm_preds = normalize_scores(preds, queries.ids, bg_sqdist, beta)
        normalized = isc_metrics(norm_preds, benchmark.ground_truth)
        norm_preds.to_csv(out / "predictions_normalized.csv")
        summary["normalized"] = dict(normalized.as_dict(), beta=beta, n=n_background,
                                     n_background=len(background.ids))
    curves = {"raw": metrics} if normalized is None else {"raw": metrics, f"normalised (β={beta:g})": normalized}
    plot_pr_curves(curves, out / "pr_curve.png", f"{Path(benchmark.root).name}: k={k} references per query")
    atomic_write_json(out / "summary.json", summary)
    return Calibration(metrics, normalized, threshold, out, families, held, per_family)


def _family_transfer(benchmark, preds: Predictions, rule: str) -> tuple[list, dict]:
    """Each edit family left out of calibration in turn, and {family: µAP, recall@1, copies} (both empty for a
    benchmark without a qkcopy manifest)."""
    try:
        families = query_families(benchmark)
    except (FileNotFoundError, ValueError):
        return [], {}
    gt = benchmark.ground_truth
    with quiet_metrics():
        scores = {f: dict(micro_ap=m.micro_ap, recall_at_1=m.recall_at_1, copies=m.n_positives)
                  for f, m in per_family_metrics(preds, gt, families).items()}
    return family_transfer(preds, gt, families, conservative=rule == "lower-bound"), scores


def _write_boxes(found, path: Path) -> None:
    """regions.csv: query_id,reference_id,x0,y0,x1,y1 — each prediction's winning region in query pixels."""
    p = found.predictions
    lines = ["query_id,reference_id,x0,y0,x1,y1"] + [
        f"{q},{r},{','.join(map(str, b))}" for q, r, b in zip(p.query_ids.tolist(), p.reference_ids.tolist(),
                                                             found.boxes.tolist())]
    atomic_write(path, "\n".join(lines) + "\n")


def _write_verified(verified: dict, path: Path) -> None:
    """verification.csv: query_id,reference_id,inliers,matches,confidence,ms, the box and the quadrilateral (the
    reference's corners in query pixels, x y × 4; empty when no geometry was found)."""
    lines = ["query_id,reference_id,inliers,matches,confidence,ms,x0,y0,x1,y1,quad"]
    for (q, r), v in verified.items():
        box = ",".join(map(str, v.box)) if v.box else ",,,"
        quad = "" if v.quad is None else " ".join(f"{x:.1f}" for x in v.quad.ravel().tolist())
        lines.append(f"{q},{r},{v.inliers},{v.matches},{v.confidence:.4f},{v.seconds * 1000:.1f},{box},{quad}")
    atomic_write(path, "\n".join(lines) + "\n")
