"""Local-feature verification of a candidate copy: SIFT keypoints (OpenCV), Lowe's ratio test, a RANSAC
homography from the reference into the query. It says how many matches agree on one geometry (inliers), turns
that into a confidence, and maps the reference's outline into the query: the quadrilateral where the copy
sits, in query pixels. Used on the top candidates of the descriptor search, bounded in cost (`VerifyConfig`).

Letters: K keypoints, D SIFT descriptor dim (128), M tentative matches, P predictions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from qkcopy.data.images import ImageError, load_image
from qkcopy.data.isc_csv import Predictions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyConfig:
    """k: top candidates verified per query; max_side: images shrunk to this long side; features: SIFT keypoints
    kept per image; ratio: Lowe's ratio test; ransac_px: RANSAC reprojection error in (shrunk) pixels;
    min_inliers: fewer gives confidence 0; scale: inliers above the minimum for confidence 1 − 1/e; bonus: a
    verified pair's score gains bonus × confidence (scores are −squared L2)."""

    k: int = 3
    max_side: int = 320
    features: int = 500
    ratio: float = 0.8
    ransac_px: float = 4.0
    min_inliers: int = 8
    scale: float = 8.0
    bonus: float = 1.0

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_side < 32 or self.features < 8 or not 0 < self.ratio < 1 or self.min_inliers < 4:
            raise ValueError(f"VerifyConfig out of range: {self} (need k >= 1, max_side >= 32, features >= 8, "
                             "0 < ratio < 1, min_inliers >= 4)")


@dataclass(frozen=True)
class Features:
    points: np.ndarray  # (K, 2) float32 keypoint positions in the original image's pixels
    descriptors: np.ndarray  # (K, D) float32
    size: tuple[int, int]  # the original image's (width, height)


@dataclass(frozen=True)
class Verification:
    inliers: int  # matches consistent with the homography
    matches: int  # tentative matches after the ratio test
    confidence: float  # 0..1, from the inliers
    quad: np.ndarray | None  # (4, 2) float64: the reference's corners in query pixels (None: no geometry)
    box: tuple[int, int, int, int] | None  # the quad's bounding box, clipped to the query
    seconds: float


_SIFT: dict[int, cv2.SIFT] = {}


def features(img: Image.Image, cfg: VerifyConfig = VerifyConfig()) -> Features:
    """SIFT keypoints and descriptors of `img` shrunk to `cfg.max_side`, positions in `img`'s pixels."""
    width, height = img.size
    scale = min(1.0, cfg.max_side / max(width, height))
    small = img.convert("L").resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    sift = _SIFT.setdefault(cfg.features, cv2.SIFT_create(nfeatures=cfg.features))
    keypoints, desc = sift.detectAndCompute(np.asarray(small), None)
    if desc is None or not keypoints:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), (width, height))
    points = np.array([kp.pt for kp in keypoints], np.float32) / scale  # (K, 2)
    return Features(points, desc.astype(np.float32), (width, height))


def verify_features(query: Features, reference: Features, cfg: VerifyConfig = VerifyConfig()) -> Verification:
    """Ratio-test matches, a RANSAC homography reference → query, its inliers, confidence and outline."""
    start = time.perf_counter()
    none = lambda m: Verification(0, m, 0.0, None, None, time.perf_counter() - start)  # noqa: E731
    if len(query.points) < 4 or len(reference.points) < 2:
        return none(0)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(reference.descriptors, query.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < cfg.ratio * p[1].distance]
    if len(good) < cfg.min_inliers:
        return none(len(good))
    src = reference.points[[m.queryIdx for m in good]]  # (M, 2) in reference pixels
    dst = query.points[[m.trainIdx for m in good]]  # (M, 2) in query pixels
    px = cfg.ransac_px * max(query.size) / cfg.max_side  # the tolerance in original query pixels
    h, mask = cv2.findHomography(src, dst, cv2.RANSAC, px, maxIters=500)
    if h is None or mask is None:
        return none(len(good))
    w, hh = reference.size
    corners = np.array([[0, 0], [w, 0], [w, hh], [0, hh]], np.float64).reshape(-1, 1, 2)
    quad = cv2.perspectiveTransform(corners, h).reshape(4, 2)  # (4, 2) in query pixels
    inliers = int(mask.sum())
    if not _plausible(quad, query.size):
        return Verification(inliers, len(good), 0.0, None, None, time.perf_counter() - start)
    confidence = float(1.0 - np.exp(-max(0, inliers - cfg.min_inliers) / cfg.scale)) if inliers >= cfg.min_inliers \
        else 0.0
    qw, qh = query.size
    box = (int(max(0, quad[:, 0].min())), int(max(0, quad[:, 1].min())), int(min(qw, quad[:, 0].max())),
           int(min(qh, quad[:, 1].max())))
    return Verification(inliers, len(good), confidence, quad, box, time.perf_counter() - start)


def _plausible(quad: np.ndarray, size: tuple[int, int]) -> bool:
    """A copy's outline: convex, not folded, not degenerate, and overlapping the query by some area."""
    if not np.isfinite(quad).all() or not cv2.isContourConvex(quad.astype(np.float32).reshape(-1, 1, 2)):
        return False
    area = cv2.contourArea(quad.astype(np.float32))
    w, h = size
    return area >= 0.01 * w * h and area <= 100.0 * w * h


def verify_pair(query: Image.Image, reference: Image.Image, cfg: VerifyConfig = VerifyConfig()) -> Verification:
    """Verify one (query, reference) pair of decoded images (features of both, then `verify_features`)."""
    start = time.perf_counter()
    v = verify_features(features(query, cfg), features(reference, cfg), cfg)
    return Verification(v.inliers, v.matches, v.confidence, v.quad, v.box, time.perf_counter() - start)


def verify_predictions(preds: Predictions, query_path: Mapping[str, object], reference_path: Mapping[str, object],
                       cfg: VerifyConfig = VerifyConfig(),
                       progress: Callable = lambda x, **_: x) -> tuple[Predictions, dict[tuple[str, str], Verification]]:
    """Verify the `cfg.k` best-scored references of each query and re-score them: score + bonus × confidence.

    Query features are computed once per query; unreadable images leave their pairs unverified (logged).
    Returns the re-scored predictions (same pairs and order) and each verified pair's `Verification`.
    """
    scores = preds.scores.copy()  # (P,)
    found: dict[tuple[str, str], Verification] = {}
    order = np.lexsort((-preds.scores, preds.query_ids))  # per query, best first
    q_sorted = preds.query_ids[order]
    starts = np.flatnonzero(np.r_[True, q_sorted[1:] != q_sorted[:-1]]) if len(order) else np.zeros(0, int)
    for s in progress(starts.tolist(), desc="verifying", unit="query"):
        qid = str(q_sorted[s])
        rows = [i for i in order[s:s + cfg.k].tolist() if preds.query_ids[i] == qid]
        try:
            qf = features(load_image(query_path[qid]), cfg)
        except (ImageError, KeyError) as err:
            log.warning("query %s not verified: %s", qid, err)
            continue
        for i in rows:
            rid = str(preds.reference_ids[i])
            start = time.perf_counter()
            try:
                rf = features(load_image(reference_path[rid]), cfg)
            except (ImageError, KeyError) as err:
                log.warning("reference %s not verified: %s", rid, err)
                continue
            v = verify_features(qf, rf, cfg)
            found[(qid, rid)] = Verification(v.inliers, v.matches, v.confidence, v.quad, v.box,
                                             time.perf_counter() - start)
            scores[i] += cfg.bonus * v.confidence
    return Predictions(preds.query_ids, preds.reference_ids, scores), found
