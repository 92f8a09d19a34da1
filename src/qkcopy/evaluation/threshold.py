"""The copy verdict and its threshold: the `Threshold` type, its file, its checks, the calibration rules, and
`is_copy`, the one place where "score ≥ threshold" is decided.

Scores are −squared L2 (higher = more similar, ≤ 0). A threshold is either calibrated (`choose_threshold` on a
benchmark's predictions, saved as threshold.json by `qkcopy eval`, pinned in a collection) or a number a user
gives (checked by `check_score_threshold`). Rules:
* "point": the lowest score at which precision reaches the target (0.9);
* "lower-bound" (the default): the lowest score at which the one-sided 95 % Clopper–Pearson lower bound of
  precision is still at the target (`conservative_threshold`); with n flagged pairs, tp true, the bound is the
  0.05 quantile of Beta(tp, n − tp + 1).
How a threshold holds on edit families it never saw is measured in `qkcopy.evaluation.transfer`.

Example:
    >>> t = load_threshold("runs/qk/eval/threshold.json", model.fingerprint)
    >>> is_copy(-0.8, t)
    True
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from scipy.stats import beta as beta_dist

from qkcopy.data.isc_csv import GroundTruth, Predictions
from qkcopy.errors import FingerprintMismatch, ThresholdError, read_json
from qkcopy.io import atomic_write_json
from qkcopy.evaluation.metrics import TARGET_PRECISION, Metrics, precision_recall_at_threshold

log = logging.getLogger(__name__)

THRESHOLD_FORMAT = "qkcopy-threshold/1"
RULES = ("lower-bound", "point")


@dataclass(frozen=True)
class Threshold:
    score: float  # pairs with score >= this are called copies
    precision: float  # achieved on the calibration benchmark at this threshold
    recall: float
    target_precision: float
    target_met: bool  # False: precision target never reached, `score` gives the best precision seen
    fingerprint: str  # the model it was calibrated for
    k: int  # neighbours per query in the calibration search
    benchmark: str
    rule: str = "point"  # point: precision reaches the target; lower-bound: its 95 % lower bound does
    precision_lower: float = 0.0  # one-sided 95 % Clopper–Pearson lower bound of `precision`
    unfamiliar_precision: float | None = None  # pooled, each edit family left out of calibration in turn
    scoring: str = "whole"  # how pair scores were made: "whole", or regions/margin/size/verification (`scoring_of`)

    def check_model(self, fingerprint: str, where: object = None) -> None:
        """Raise `FingerprintMismatch` unless this threshold was calibrated for the model `fingerprint`."""
        if self.fingerprint != fingerprint:
            raise FingerprintMismatch(f"{where or 'the threshold'} was calibrated for model {self.fingerprint}, not "
                                      f"{fingerprint}; scores of different models are not comparable — run "
                                      "`qkcopy eval` with this model", where)

    def is_copy(self, score: float | np.ndarray) -> bool | np.ndarray:
        """The copy verdict at this threshold (`is_copy`)."""
        return is_copy(score, self)


def scoring_of(regions: int = 0, margin: float = 0.0, region_size: int | None = None, verify_k: int = 0) -> str:
    """How scores were made, as `Threshold.scoring` records it: a threshold holds for scores made the same way."""
    parts = [f"regions={regions} margin={margin:g}" + (f" size={region_size}" if region_size else "")] if regions \
        else []
    parts += [f"verify={verify_k}"] if verify_k else []
    return " ".join(parts) or "whole"


CONFIDENCE = 0.95


def precision_lower_bound(tp: np.ndarray | int, flagged: np.ndarray | int, confidence: float = CONFIDENCE) -> np.ndarray:
    """One-sided Clopper–Pearson lower bound of precision tp / flagged (0 where tp is 0)."""
    tp, flagged = np.asarray(tp, dtype=np.float64), np.asarray(flagged, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta_dist.ppf(1.0 - confidence, tp, flagged - tp + 1.0)
    return np.where(tp > 0, np.nan_to_num(bound, nan=0.0), 0.0)


def conservative_threshold(metrics: Metrics, target: float = TARGET_PRECISION,
                           confidence: float = CONFIDENCE) -> float | None:
    """The lowest score whose cut-off keeps the precision's lower confidence bound at `target` or above; None
    when no cut-off does. Cut-offs inside a run of tied scores are skipped: a threshold keeps all of a tie."""
    n = np.arange(1, len(metrics.precision) + 1)
    tp = np.rint(metrics.precision * n)
    ok = precision_lower_bound(tp, n, confidence) >= target
    s = metrics.thresholds
    ok[:-1] &= s[1:] < s[:-1]  # the last prediction of its score
    if not ok.any():
        return None
    return float(s[np.flatnonzero(ok)[-1]])


def point_threshold(metrics: Metrics) -> float | None:
    return metrics.threshold_at_p90


def choose_threshold(metrics: Metrics, preds: Predictions, gt: GroundTruth, fingerprint: str, k: int,
                     benchmark: str, rule: str = "lower-bound") -> Threshold:
    """The score threshold at precision 0.9 — where precision reaches it (rule "point") or its 95 % lower
    bound does ("lower-bound", falling back to "point" when no cut-off qualifies) — or, when 0.9 is never
    reached, the threshold of the best precision, with what it achieves."""
    if rule not in RULES:
        raise ValueError(f"unknown calibration rule {rule!r}; expected one of {list(RULES)}")
    bound = conservative_threshold(metrics) if rule == "lower-bound" else None
    if bound is not None:
        score, met = bound, True
    elif metrics.threshold_at_p90 is not None:
        score, met, rule = metrics.threshold_at_p90, True, "point"
    else:
        # best precision, then highest recall; only cut-offs that keep at least one true pair
        useful = metrics.recall > 0
        if not useful.any():
            raise ValueError("no true copy is found in the top-k of any query: the model cannot be calibrated "
                             "on this benchmark")
        order = np.lexsort((-metrics.recall, -np.where(useful, metrics.precision, -1.0)))
        score, met = float(metrics.thresholds[order[0]]), False
        log.warning("precision %.2f is never reached on %s; saving the threshold of the best precision seen",
                    TARGET_PRECISION, benchmark)
    precision, recall, flagged = precision_recall_at_threshold(preds, gt, score)
    lower = float(precision_lower_bound(round(precision * flagged), flagged))
    return Threshold(float(score), precision, recall, TARGET_PRECISION, met, fingerprint, k, benchmark, rule, lower)


def save_threshold(threshold: Threshold, path: str | Path) -> Path:
    return atomic_write_json(path, {"format": THRESHOLD_FORMAT, **asdict(threshold)})


def check_score_threshold(score: float, where: str = "threshold") -> float:
    """A usable copy threshold: finite and <= 0, since scores are −squared L2 (a higher one labels no pair)."""
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise ThresholdError(f"{where}: the score threshold must be a number, got {score!r}", where)
    if not math.isfinite(score):
        raise ThresholdError(f"{where}: the score threshold is {score}; it must be a finite number (scores are "
                             "−squared L2 distances, <= 0)", where)
    if score > 0:
        raise ThresholdError(f"{where}: the score threshold {score:g} is above 0, the highest possible score "
                             "(scores are −squared L2 distances), so no pair could be called a copy; give a "
                             "value <= 0 such as -0.5, or a threshold.json from `qkcopy eval`", where)
    return float(score)


def load_threshold(spec: str | Path | float, fingerprint: str | None = None) -> Threshold | float:
    """A threshold.json (checked against the model's fingerprint) or a plain number given by the user."""
    if isinstance(spec, (int, float)):
        return check_score_threshold(spec, f"threshold {spec!r}")
    try:
        value = float(str(spec))
    except ValueError:
        pass
    else:
        return check_score_threshold(value, f"threshold {spec!r}")
    path = Path(spec)
    if path.is_dir():
        path = path / "threshold.json"
    if not path.is_file():
        raise FileNotFoundError(f"threshold {spec!r} is neither a number nor a threshold.json file "
                                "(write one with `qkcopy eval`)")
    data = read_json(path, ThresholdError, "threshold file")
    if not isinstance(data, dict) or data.pop("format", None) != THRESHOLD_FORMAT:
        raise ThresholdError(f"{path} is not a qkcopy threshold file (no \"format\": \"{THRESHOLD_FORMAT}\"); "
                             "write one with `qkcopy eval`", path)
    threshold = _threshold_from(data, path)
    if fingerprint is not None:
        threshold.check_model(fingerprint, path)
    return threshold


def _threshold_from(data: dict, path: Path) -> Threshold:
    """Every key of `Threshold`, each of its type, nothing else; the score checked like a user's value."""
    names = [f.name for f in fields(Threshold)]
    optional = {"rule", "precision_lower", "unfamiliar_precision", "scoring"}  # absent from files of earlier versions
    missing, extra = [n for n in names if n not in data and n not in optional], sorted(set(data) - set(names))
    if missing or extra:
        raise ThresholdError(f"{path}: " + "; ".join(
            ([f"missing key(s) {', '.join(missing)}"] if missing else []) +
            ([f"unknown key(s) {', '.join(extra)}"] if extra else [])) +
            " — write it again with `qkcopy eval`", path)
    kinds = dict(score=float, precision=float, recall=float, target_precision=float, target_met=bool,
                 fingerprint=str, k=int, benchmark=str, rule=str, precision_lower=float, unfamiliar_precision=float,
                 scoring=str)
    for name, kind in kinds.items():
        if name not in data or (name == "unfamiliar_precision" and data[name] is None):
            continue
        value = data[name]
        ok = isinstance(value, bool) if kind is bool else isinstance(value, str) if kind is str else \
            isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        if not ok:
            raise ThresholdError(f"{path}: key {name} must be {kind.__name__}, got {value!r}", path)
    if data.get("rule", "point") not in RULES:
        raise ThresholdError(f"{path}: key rule must be one of {list(RULES)}, got {data['rule']!r}", path)
    check_score_threshold(data["score"], f"{path} (key score)")
    return Threshold(**{**data, "score": float(data["score"])})


def threshold_score(threshold: Threshold | float | None) -> float | None:
    """The score of a calibrated threshold or a user's number (checked), or None."""
    if threshold is None:
        return None
    if isinstance(threshold, Threshold):
        return threshold.score
    return check_score_threshold(threshold)


def is_copy(score: float | np.ndarray, threshold: Threshold | float | None) -> bool | np.ndarray | None:
    """The copy verdict: score ≥ the threshold (element-wise for an array); None without a threshold."""
    t = threshold_score(threshold)
    if t is None:
        return None
    if isinstance(score, np.ndarray):
        return score >= t
    return bool(score >= t)


def any_copy(scores, threshold: Threshold | float | None) -> bool | None:
    """An image's verdict from its matches' scores: a copy if any match is one; None without a threshold."""
    if threshold_score(threshold) is None:
        return None
    return any(is_copy(float(s), threshold) for s in scores)


def threshold_to_json(threshold: Threshold | float) -> dict:
    """A threshold as stored beside what it labels (a collection's settings): every field, or a user's score."""
    if isinstance(threshold, Threshold):
        return {"format": THRESHOLD_FORMAT, **asdict(threshold)}
    return {"score": check_score_threshold(threshold)}


def threshold_from_json(data: dict, where: object) -> Threshold | float:
    """The inverse of `threshold_to_json`, checked as a threshold file is (`where` names the store)."""
    if not isinstance(data, dict) or "score" not in data:
        raise ThresholdError(f"{where}: a stored threshold must be an object with a score, got {data!r}", where)
    if set(data) == {"score"}:  # a user's number
        return check_score_threshold(data["score"], f"{where} (threshold)")
    data = {k: v for k, v in data.items() if k != "format"}
    return _threshold_from(data, where)
