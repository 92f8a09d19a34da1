"""Groups of copies within one set of images: `qkcopy dedup`.

Within a folder nobody says which image is the original, so each image is described with both models, and
the pair (a, b) scores max(−d²(Q_a, K_b), −d²(Q_b, K_a)): the better of "a is a copy of b" and the reverse,
on the same scale as the threshold `qkcopy eval` calibrates. Each image's k nearest neighbours (an exact
faiss search of its Q descriptor among all K descriptors) give the candidate pairs; pairs at or above the
threshold are copies, joined into groups (connected components, union-find).

With a ground truth (pairs of ids, e.g. a benchmark's ground_truth.csv), the true pairs are every pair within
a ground-truth group, and precision and recall are counted over unordered pairs, as imagededup's evaluation
does: once for the direct pairs, once for all the pairs the groups imply.

Letters: N images, E descriptor dim, k neighbours.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from qkcopy.io import atomic_path, atomic_write, atomic_write_json
from qkcopy.evaluation.region_search import best_over_regions
from qkcopy.evaluation.threshold import Threshold, is_copy, threshold_score

log = logging.getLogger(__name__)

Pair = tuple[str, str]  # (a, b) with a < b


@dataclass(frozen=True)
class Dedup:
    ids: list[str]  # image ids (file stems) that were read
    paths: dict[str, Path]
    pairs: dict[Pair, float]  # copy pairs (score >= threshold) → score
    groups: list[list[str]]  # connected components of `pairs`, largest first
    threshold: float
    skipped: list[str]
    boxes: dict = field(default_factory=dict)  # with regions: pair → (image id, box in its pixels) of the region


def groups_of(ids: Iterable[str], edges: Iterable[Pair]) -> list[list[str]]:
    """Connected components with at least two members, each sorted, largest first (then by first id)."""
    parent = {i: i for i in ids}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[str, list[str]] = {}
    for i in parent:
        members.setdefault(find(i), []).append(i)
    return sorted((sorted(m) for m in members.values() if len(m) > 1), key=lambda g: (-len(g), g[0]))


def pairs_within(groups: Iterable[Sequence[str]]) -> set[Pair]:
    return {(a, b) for g in groups for i, a in enumerate(sorted(g)) for b in sorted(g)[i + 1:]}


def copy_pairs(ids: Sequence[str], q: np.ndarray, k: np.ndarray, threshold: Threshold | float,
               neighbours: int = 10) -> dict[Pair, float]:
    """Pairs scoring >= threshold among each image's `neighbours` nearest: {(a, b): best score of both ways}."""
    if q.shape != k.shape or q.ndim != 2 or q.dtype != np.float32 or len(ids) != len(q):
        raise ValueError(f"q and k must be float32 (N, E) with N = {len(ids)} ids, got {q.shape}, {k.shape}")
    index = faiss.IndexFlatL2(k.shape[1])
    index.add(np.ascontiguousarray(k))
    sqdist, rows = index.search(np.ascontiguousarray(q), min(neighbours + 1, len(ids)))  # (N, k+1)
    pairs: dict[Pair, float] = {}
    for i, (d_row, r_row) in enumerate(zip(sqdist, rows)):
        for d, j in zip(d_row.tolist(), r_row.tolist()):
            score = -max(d, 0.0)
            if j < 0 or j == i or not is_copy(score, threshold):
                continue
            key = (ids[i], ids[j]) if ids[i] < ids[j] else (ids[j], ids[i])
            pairs[key] = max(score, pairs.get(key, -np.inf))
    return pairs


def region_copy_pairs(ids: Sequence[str], table, k: np.ndarray, threshold: Threshold | float, neighbours: int = 10,
                      margin: float = 0.0) -> tuple[dict[Pair, float], dict[Pair, tuple[str, tuple]]]:
    """`copy_pairs` with each image's Q side described by regions (`table`: a `RegionEmbeddings` of the same
    images, in order): a pair scores the best region of either image against the other's K descriptor. Also
    {pair: (image id, box)}: the region of the pair's best score, when it was not a whole image."""
    if k.ndim != 2 or k.dtype != np.float32 or len(k) != len(ids) or list(table.ids) != list(ids):
        raise ValueError(f"k must be float32 (N, E) and the region table of the same {len(ids)} images")
    index = faiss.IndexFlatL2(k.shape[1])
    index.add(np.ascontiguousarray(k))
    sqdist, rows = index.search(np.ascontiguousarray(table.vectors), min(neighbours + 1, len(ids)))  # (T, k+1)
    first = np.r_[True, table.owner[1:] != table.owner[:-1]]  # (T,) whole-image rows
    pairs: dict[Pair, float] = {}
    boxes: dict[Pair, tuple[str, tuple]] = {}
    for i, j, d, row in zip(*(x.tolist() for x in best_over_regions(table.owner, sqdist, rows, margin))):
        score = -max(d, 0.0)
        if j == i or not is_copy(score, threshold):
            continue
        key = (ids[i], ids[j]) if ids[i] < ids[j] else (ids[j], ids[i])
        if score > pairs.get(key, -np.inf):
            pairs[key] = score
            boxes.pop(key, None)
            if not first[row]:
                boxes[key] = (ids[i], tuple(int(v) for v in table.boxes[row]))
    return pairs, boxes


def find_duplicates(trained, paths: Sequence[Path], threshold: Threshold | float, neighbours: int = 10,
                    batch_size: int = 64, workers: int = 2, regions: int = 0, region_margin: float = 0.0) -> Dedup:
    """Embed `paths` with Q and K (a `TrainedModels`), then pair and group them; with `regions`, each image's Q
    side is also described by that many regions (`region_copy_pairs`), and sheets draw the region that matched."""
    from qkcopy.retrieval.embed_shards import image_ids

    image_ids(paths)  # ids (stems) must be unique
    if regions:
        table = trained.describe_regions(paths, regions, batch_size, workers, "Q regions")
        q = table.whole()
    else:
        q = trained.describe("query", paths, batch_size, workers, "Q descriptors")
    k = trained.describe("reference", paths, batch_size, workers, "K descriptors")
    if q.ids != k.ids:
        raise ValueError("the Q and K passes read different images; are the files changing?")
    if len(q.ids) < 2:
        raise ValueError(f"need at least two readable images, got {len(q.ids)}")
    boxes = {}
    if regions:
        pairs, boxes = region_copy_pairs(q.ids, table, k.vectors, threshold, neighbours, region_margin)
    else:
        pairs = copy_pairs(q.ids, q.vectors, k.vectors, threshold, neighbours)
    by_id = {Path(p).stem: Path(p) for p in paths}
    return Dedup(q.ids, {i: by_id[i] for i in q.ids}, pairs, groups_of(q.ids, pairs), threshold_score(threshold),
                 q.skipped, boxes)


def read_ground_truth(path: str | Path, ids: Sequence[str]) -> list[list[str]]:
    """Groups of true copies from a CSV of id pairs (header optional; rows with an empty second id skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground truth {path} does not exist")
    known = set(ids)
    edges, unknown = [], 0
    with path.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f)):
            if len(row) < 2:
                raise ValueError(f"{path}, line {n + 1}: expected two ids per row, got {row}")
            a, b = (Path(x.strip()).stem for x in row[:2])
            if not a or not b:
                continue
            if a not in known or b not in known:
                unknown += n > 0  # a header row is not counted
                continue
            edges.append((a, b))
    if unknown:
        log.warning("%s: %d pairs name images that are not in the folders; ignored", path, unknown)
    if not edges:
        raise ValueError(f"{path}: no pair of the ground truth names two of the {len(ids)} images")
    return groups_of(ids, edges)


def precision_recall(predicted: set[Pair], true: set[Pair]) -> dict:
    hit = len(predicted & true)
    return dict(precision=hit / len(predicted) if predicted else 1.0, recall=hit / len(true) if true else 1.0,
                predicted=len(predicted), true=len(true), correct=hit)


def dedup_metrics(result: Dedup, truth_groups: list[list[str]]) -> dict:
    true = pairs_within(truth_groups)
    return dict(pairs=precision_recall(set(result.pairs), true),
                groups=precision_recall(pairs_within(result.groups), true))


def _thumb(path: Path, size: int = 180, boxes: Sequence[tuple] = ()) -> str:
    """A JPEG data URL of the image shrunk to `size`, with `boxes` (in its pixels) drawn in red."""
    from PIL import Image, ImageDraw

    from qkcopy.data.images import load_image

    img = load_image(path)
    full = img.size
    img.thumbnail((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in boxes:
        f = img.width / full[0], img.height / full[1]
        draw.rectangle((x0 * f[0], y0 * f[1], x1 * f[0] - 1, y1 * f[1] - 1), outline=(230, 30, 30), width=2)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def write_report(result: Dedup, out: str | Path, scores: dict | None = None, max_sheets: int = 500) -> Path:
    """pairs.csv, groups.csv, groups.json and sheets/ (one self-contained HTML contact sheet per group)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "pairs.csv") as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "score"])
        for (a, b), s in sorted(result.pairs.items(), key=lambda x: -x[1]):
            w.writerow([a, b, f"{s:.6g}"])
    with atomic_path(out / "groups.csv") as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "id", "path"])
        for g, members in enumerate(result.groups, 1):
            for m in members:
                w.writerow([g, m, result.paths[m]])
    atomic_write_json(out / "groups.json", dict(
        threshold=result.threshold, images=len(result.ids), pairs=len(result.pairs), groups=result.groups,
        skipped=result.skipped, **({"evaluation": scores} if scores else {})))
    links = []
    for g, members in enumerate(result.groups[:max_sheets], 1):
        drawn = {m: [box for pair, (who, box) in result.boxes.items() if who == m and set(pair) <= set(members)]
                 for m in members}  # the regions that matched another member
        cells = "".join(f'<figure><img src="{_thumb(result.paths[m], boxes=drawn[m])}" alt="{html.escape(m)}">'
                        f"<figcaption>{html.escape(m)}</figcaption></figure>" for m in members)
        inside = [f"{html.escape(a)} – {html.escape(b)}: {s:.4g}" for (a, b), s in result.pairs.items()
                  if a in members and b in members]
        atomic_write(out / "sheets" / f"group-{g:04d}.html", _PAGE.format(
            title=f"group {g}: {len(members)} images", body=cells, pairs="<br>".join(inside)))
        links.append(f'<li><a href="group-{g:04d}.html">group {g}</a>: {len(members)} images</li>')
    atomic_write(out / "sheets" / "index.html", _PAGE.format(
        title=f"{len(result.groups)} groups of copies among {len(result.ids)} images", body=f"<ul>{''.join(links)}</ul>",
        pairs=""))
    return out


_PAGE = """<!doctype html><meta charset="utf-8"><title>{title}</title>
<style>body{{font:14px system-ui;margin:20px}} figure{{display:inline-block;margin:6px;text-align:center}}
img{{max-width:180px;max-height:180px;display:block}} figcaption{{font-size:12px}}</style>
<h1>{title}</h1>{body}<p>{pairs}</p>
"""
