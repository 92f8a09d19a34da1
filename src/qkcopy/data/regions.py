"""Query regions: where in a picture a copy may sit, proposed cheaply (no model), for region descriptors.

A copy often fills only part of a query: a photo pasted into another, one tile of a collage, the content of a
screenshot. `propose_regions` gives the whole image plus up to `n` boxes:

  * rectangles whose sides are strong straight edges (OpenCV Canny + probabilistic Hough, on the image shrunk
    to `EDGE_SIDE`): the borders of a pasted picture, of a collage tile, of a screenshot's content area. A side
    may be the image border; at least one must be an edge inside the image;
  * the content box left when uniform margins are trimmed (a padded or letter-boxed copy);
  * a multi-scale overlapping grid (boxes of 3/4, 1/2 and 1/3 of each side, half-overlapping), to fill the rest.

Near-duplicates (IoU > 0.7 with a kept box) are dropped. Boxes are (x0, y0, x1, y1) in the image's pixels,
x1/y1 exclusive; row 0 is always the whole image. Deterministic: the same image gives the same boxes.

Letters: R boxes (1 + at most n), L candidate lines per axis.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

EDGE_SIDE = 256  # edges are found on the image shrunk to this long side
GRID_SCALES = (0.75, 0.5, 0.34)  # grid boxes' side as a fraction of the image's, coarsest first
MIN_SIDE = 0.2  # an edge rectangle spans at least this fraction of each side
MIN_SUPPORT = 0.7  # mean edge coverage of an edge rectangle's four sides
MAX_LINES = 12  # candidate lines kept per axis (L), the longest first
SAME_BOX_IOU = 0.7  # a proposal this close to a kept one is dropped


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (A, 4) and b (B, 4), (x0, y0, x1, y1) → (A, B) float64."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h  # (A, B)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def grid_boxes(width: int, height: int, scales=GRID_SCALES) -> np.ndarray:
    """Overlapping grid boxes (coarsest scale first, row-major), (G, 4) float64 in pixels."""
    boxes = []
    for f in scales:
        steps = int(np.ceil((1 - f) / (f / 2) - 1e-9)) + 1  # half-overlapping positions per axis
        for ty in np.linspace(0, 1 - f, steps):
            for tx in np.linspace(0, 1 - f, steps):
                boxes.append((tx * width, ty * height, (tx + f) * width, (ty + f) * height))
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def _lines(rgb: np.ndarray) -> tuple[list[tuple[int, np.ndarray]], list[tuple[int, np.ndarray]]]:
    """Axis-aligned edge lines of a small image (h, w, 3) uint8 (edges of any channel: colour edges of equal
    brightness count): ([(x, rows with an edge pixel within 1 px
    of x (h,) bool)], [(y, such columns (w,) bool)]), at most `MAX_LINES` each, the best covered first.
    Hough finds where lines are; the Canny map says how much of any interval along them is edge."""
    h, w = rgb.shape[:2]
    edges = np.any([cv2.Canny(channel, 30, 90) > 0 for channel in cv2.split(rgb)], axis=0)  # (h, w)
    found = cv2.HoughLinesP(edges.astype(np.uint8) * 255, 1, np.pi / 180, threshold=max(12, min(h, w) // 8),
                            minLineLength=max(8, int(MIN_SIDE * min(h, w) * 0.6)), maxLineGap=3)
    xs, ys = set(), set()
    for x0, y0, x1, y1 in ([] if found is None else np.asarray(found).reshape(-1, 4).tolist()):
        if abs(x1 - x0) <= 1:
            xs.add((x0 + x1) // 2)
        elif abs(y1 - y0) <= 1:
            ys.add((y0 + y1) // 2)
    vertical = [(x, edges[:, max(0, x - 1):x + 2].any(axis=1)) for x in _merged(xs)]
    horizontal = [(y, edges[max(0, y - 1):y + 2, :].any(axis=0)) for y in _merged(ys)]
    best = lambda lines: sorted(lines, key=lambda kv: -kv[1].sum())[:MAX_LINES]  # noqa: E731
    return best(vertical), best(horizontal)


def _merged(values: set[int], gap: int = 2) -> list[int]:
    """Positions closer than `gap` pixels merged into one (the first of each run)."""
    out: list[int] = []
    for v in sorted(values):
        if not out or v - out[-1] > gap:
            out.append(v)
    return out


def edge_rectangles(rgb: np.ndarray) -> list[tuple[float, tuple[int, int, int, int]]]:
    """Rectangles of a small image (h, w, 3) uint8 whose sides are edges: [(score, (x0, y0, x1, y1))], best
    first. A side on the image border counts as fully covered; at least one side must be an inner edge; the
    score is the sides' mean edge coverage plus 0.1 per inner side."""
    h, w = rgb.shape[:2]
    vertical, horizontal = (sorted(lines, key=lambda kv: kv[0]) for lines in _lines(rgb))  # by position
    xs = np.array([0] + [x for x, _ in vertical] + [w])  # (Lx + 2,) the borders first and last
    ys = np.array([0] + [y for y, _ in horizontal] + [h])
    inner_x = np.r_[False, np.ones(len(vertical), bool), False]
    inner_y = np.r_[False, np.ones(len(horizontal), bool), False]
    cover_x = np.stack([np.ones(h, bool)] + [c for _, c in vertical] + [np.ones(h, bool)])  # (Lx + 2, h)
    cover_y = np.stack([np.ones(w, bool)] + [c for _, c in horizontal] + [np.ones(w, bool)])  # (Ly + 2, w)
    cum_x = np.concatenate([np.zeros((len(xs), 1)), np.cumsum(cover_x, axis=1)], axis=1)  # (Lx + 2, h + 1)
    cum_y = np.concatenate([np.zeros((len(ys), 1)), np.cumsum(cover_y, axis=1)], axis=1)  # (Ly + 2, w + 1)
    i0, i1 = np.triu_indices(len(xs), 1)  # (P,) pairs of vertical lines
    j0, j1 = np.triu_indices(len(ys), 1)  # (Q,) pairs of horizontal lines
    ok_x = xs[i1] - xs[i0] >= MIN_SIDE * w
    ok_y = ys[j1] - ys[j0] >= MIN_SIDE * h
    i0, i1, j0, j1 = i0[ok_x], i1[ok_x], j0[ok_y], j1[ok_y]
    ya, yb = ys[j0][None, :], ys[j1][None, :]  # (1, Q)
    xa, xb = xs[i0][:, None], xs[i1][:, None]  # (P, 1)
    sides = np.stack([(cum_x[i0][:, yb[0]] - cum_x[i0][:, ya[0]]) / (yb - ya),  # left (P, Q)
                      (cum_x[i1][:, yb[0]] - cum_x[i1][:, ya[0]]) / (yb - ya),  # right
                      ((cum_y[j0][:, xb[:, 0]] - cum_y[j0][:, xa[:, 0]]) / (xb - xa).T).T,  # top
                      ((cum_y[j1][:, xb[:, 0]] - cum_y[j1][:, xa[:, 0]]) / (xb - xa).T).T])  # bottom (4, P, Q)
    inner = (inner_x[i0].astype(int) + inner_x[i1])[:, None] + (inner_y[j0].astype(int) + inner_y[j1])[None, :]
    score = sides.mean(axis=0) + 0.1 * inner  # (P, Q)
    keep = (sides.mean(axis=0) >= MIN_SUPPORT) & (sides.min(axis=0) >= 0.4) & (inner > 0)
    found = [(float(score[p, q]), (int(xs[i0[p]]), int(ys[j0[q]]), int(xs[i1[p]]), int(ys[j1[q]])))
             for p, q in zip(*np.nonzero(keep))]
    found.sort(key=lambda t: (-t[0], t[1]))
    return found


def content_box(rgb: np.ndarray, tolerance: float = 12.0) -> tuple[int, int, int, int] | None:
    """The box left when uniform margins (rows/columns all within `tolerance` of the corner colour) are
    trimmed from a small (h, w, 3) image; None when there is no margin to trim."""
    h, w, _ = rgb.shape
    diff = cv2.absdiff(np.ascontiguousarray(rgb), np.full_like(rgb, 0) + rgb[0, 0])  # (h, w, 3) uint8, exact
    far = np.maximum(np.maximum(diff[:, :, 0], diff[:, :, 1]), diff[:, :, 2]) > tolerance  # (h, w)
    rows, cols = np.flatnonzero(far.any(axis=1)), np.flatnonzero(far.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return None
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    trimmed = box != (0, 0, w, h)
    big = box[2] - box[0] >= MIN_SIDE * w and box[3] - box[1] >= MIN_SIDE * h
    return box if trimmed and big else None


def propose_regions(img: Image.Image, n: int) -> np.ndarray:
    """The whole image and up to `n` regions where a copy may sit (module docstring), (1 + ≤ n, 4) int64 boxes
    (x0, y0, x1, y1) in `img`'s pixels, row 0 the whole image; the edge rectangles first, then the grid."""
    if n < 0:
        raise ValueError(f"the number of regions must be >= 0, got {n}")
    width, height = img.size
    whole = np.array([[0, 0, width, height]], np.int64)
    if n == 0 or min(width, height) < 16:
        return whole
    scale = min(1.0, EDGE_SIDE / max(width, height))
    small = img.convert("RGB").resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                      Image.BILINEAR)
    rgb = np.asarray(small)  # (h, w, 3) uint8
    found = [box for _, box in edge_rectangles(rgb)]
    trimmed = content_box(rgb)
    if trimmed is not None:
        found.insert(0, trimmed)
    candidates = np.concatenate([np.asarray(found, np.float64).reshape(-1, 4) / scale,
                                 grid_boxes(width, height)])  # (C, 4) in img pixels
    kept = [whole[0].astype(np.float64)]
    for box in candidates:
        if len(kept) == n + 1:
            break
        if box_iou(box[None], np.asarray(kept)).max() <= SAME_BOX_IOU:
            kept.append(box)
    boxes = np.round(np.asarray(kept)).astype(np.int64)  # (R, 4)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes
