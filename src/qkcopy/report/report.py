"""What a person reads after a run: the results table, loss curves, a retrieval contact sheet, report.md/.html.

`loss_curves` plots a run's train_log.jsonl; `retrieval_sheet` shows queries with their top-3 references (a
correct one framed green, a wrong one red, and the true reference added when it is not among them);
`write_report` puts the table and the figures into report.md and report.html in a run directory.

A results row is a dict with "method" and the metrics of `Metrics.as_dict()` (micro_ap, recall_at_p90,
recall_at_1, recall_at_10), optionally "seconds" (wall time).
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

matplotlib.use("Agg")  # files only; never opens a window
import matplotlib.pyplot as plt  # noqa: E402

from qkcopy.data.images import ImageError, load_image  # noqa: E402
from qkcopy.data.isc_csv import GroundTruth, Predictions  # noqa: E402
from qkcopy.io import atomic_write

log = logging.getLogger(__name__)

COLUMNS = (("micro_ap", "µAP"), ("recall_at_p90", "R@P90"), ("recall_at_1", "recall@1"), ("recall_at_10", "recall@10"))
LOSS_FIGSIZE, LOSS_DPI = (8.0, 4.5), 100  # → 800 × 450 px
THUMB, BORDER, LABEL, PAD, HEADER = 112, 4, 28, 8, 24  # contact-sheet geometry, pixels
SHEET_COLUMNS = ("query", "top 1", "top 2", "top 3", "true match")
GREEN, RED, GREY, BLUE, WHITE = (0, 160, 60), (210, 30, 30), (150, 150, 150), (40, 90, 220), (255, 255, 255)



def format_table(rows: Sequence[Mapping], markdown: bool = True) -> str:
    """The results as a Markdown table (or aligned plain text): method, metrics, wall time."""
    head = ["method", *(label for _, label in COLUMNS), "wall time"]
    body = []
    for row in rows:
        cells = [str(row["method"])]
        cells += [f"{row[key]:.3f}" if row.get(key) is not None else "–" for key, _ in COLUMNS]
        cells.append(f"{row['seconds']:.0f} s" if row.get("seconds") is not None else "–")
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, body)])


def read_train_log(train_log: str | Path) -> list[dict]:
    """The records of a train_log.jsonl, one per global step (a step logged twice across a resume: the last)."""
    records: dict[int, dict] = {}
    for lineno, line in enumerate(Path(train_log).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
                records[int(record["global_step"])] = record
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{train_log}:{lineno}: not a training-log record ({err})") from err
    if not records:
        raise ValueError(f"{train_log} holds no training steps")
    return [records[s] for s in sorted(records)]


def loss_curves(train_log: str | Path, png: str | Path) -> Path:
    """Plot loss, loss_pos and loss_neg against the global step, phase boundaries marked, into `png`."""
    records = read_train_log(train_log)
    steps = np.array([r["global_step"] for r in records])
    fig, ax = plt.subplots(figsize=LOSS_FIGSIZE, dpi=LOSS_DPI)
    try:
        starts = [i for i, r in enumerate(records) if i == 0 or r.get("segment") != records[i - 1].get("segment")]
        window = max(1, len(records) // 25)  # running mean over ~4% of the steps, within each phase
        for key, colour in (("loss", (0, 0, 0)), ("loss_pos", GREEN), ("loss_neg", RED)):
            values = np.array([r.get(key, np.nan) for r in records], dtype=np.float64)  # (steps,)
            ax.plot(steps, values, color=np.array(colour) / 255, linewidth=0.6, alpha=0.35)
            for j, (a, b) in enumerate(zip(starts, [*starts[1:], len(records)])):
                w = min(window, b - a)
                smooth = np.convolve(values[a:b], np.ones(w) / w, mode="valid")  # (b - a - w + 1,)
                ax.plot(steps[a + w - 1:b], smooth, color=np.array(colour) / 255, linewidth=1.4,
                        label=None if j else key if window == 1 else f"{key} (mean of {window} steps)")
        top = ax.get_ylim()[1]
        for i in starts:
            if i > 0:
                ax.axvline(records[i]["global_step"] - 0.5, color="0.5", linestyle="--", linewidth=0.8)
            ax.text(records[i]["global_step"], top, f" {records[i].get('segment', '')}", va="top", fontsize=9,
                    color="0.3")
        ax.set(xlabel="global step", ylabel="loss", title="training loss (phase boundaries dashed)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        atomic_write(Path(png), lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return Path(png)


def ranked(predictions: Predictions) -> dict[str, list[tuple[str, float]]]:
    """Each query's predicted (reference id, score), best first."""
    out: dict[str, list[tuple[str, float]]] = {}
    order = np.lexsort((predictions.reference_ids, -predictions.scores))  # score desc, ties by id
    for i in order:
        out.setdefault(str(predictions.query_ids[i]), []).append((str(predictions.reference_ids[i]),
                                                                  float(predictions.scores[i])))
    return out


def pick_examples(predictions: Predictions, gt: GroundTruth, n: int) -> list[str]:
    """Up to n copies (queries with a true reference): half found at rank 1, half missed, spread over the ids."""
    top = ranked(predictions)
    matched = sorted(q for q, r in gt.matches.items() if r is not None)
    hits = [q for q in matched if top.get(q) and top[q][0][0] == gt.matches[q]]
    hit_set = set(hits)
    misses = [q for q in matched if q not in hit_set]

    def spread(items: list[str], k: int) -> list[str]:
        k = min(k, len(items))
        return [items[int(i * len(items) / k)] for i in range(k)] if k else []

    n_hits = min(len(hits), max(n // 2, n - len(misses)))
    return spread(hits, n_hits) + spread(misses, n - n_hits)


def cell_origin(row: int, col: int) -> tuple[int, int]:
    """Top-left pixel of a contact-sheet cell; its frame is the (THUMB + 2·BORDER)² square there."""
    return PAD + col * (THUMB + 2 * BORDER + PAD), HEADER + row * (THUMB + 2 * BORDER + LABEL + PAD)


def _thumb(path: Path | None) -> Image.Image:
    canvas = Image.new("RGB", (THUMB, THUMB), (235, 235, 235))
    try:
        img = load_image(path) if path is not None else None
    except ImageError as err:
        log.warning("contact sheet: %s", err)
        img = None
    if img is not None:
        img.thumbnail((THUMB, THUMB), Image.BILINEAR)
        canvas.paste(img, ((THUMB - img.width) // 2, (THUMB - img.height) // 2))
    return canvas


def retrieval_sheet(queries: Mapping[str, Path], refs: Mapping[str, Path], predictions: Predictions,
                    gt: GroundTruth, png: str | Path, n: int = 8, examples: Sequence[str] | None = None) -> Path:
    """Contact sheet of n example queries (or the given `examples`) with their top-3 references.

    A retrieved reference that is the query's true match is framed GREEN, a wrong one RED; when the true
    match is not in the top 3 it is shown in the last column framed BLUE. Labels give ids and scores.
    """
    examples = list(examples) if examples is not None else pick_examples(predictions, gt, n)
    if not examples:
        raise ValueError("retrieval_sheet: no query to show (the ground truth has no copies among the queries)")
    top = ranked(predictions)
    font = ImageFont.load_default(size=11)
    width = cell_origin(0, len(SHEET_COLUMNS))[0]
    height = cell_origin(len(examples), 0)[1]
    sheet = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(sheet)
    for col, title in enumerate(SHEET_COLUMNS):
        draw.text((cell_origin(0, col)[0] + BORDER, 5), title, fill=(0, 0, 0), font=font)
    for row, qid in enumerate(examples):
        truth = gt.matches.get(qid)
        found = top.get(qid, [])[:3]
        cells = [(queries.get(qid), qid, GREY)]
        cells += [(refs.get(r), f"{r}\n#{k + 1} score {s:.3f}", GREEN if r == truth else RED)
                  for k, (r, s) in enumerate(found)]
        cells += [(None, "", WHITE)] * (3 - len(found))
        if truth is not None and truth not in [r for r, _ in found]:
            rank = next((k + 1 for k, (r, _) in enumerate(top.get(qid, [])) if r == truth), None)
            cells.append((refs.get(truth), f"{truth}\n{'rank ' + str(rank) if rank else 'not retrieved'}", BLUE))
        for col, (path, label, colour) in enumerate(cells):
            x, y = cell_origin(row, col)
            if colour == WHITE:
                continue
            draw.rectangle((x, y, x + THUMB + 2 * BORDER - 1, y + THUMB + 2 * BORDER - 1), fill=colour)
            sheet.paste(_thumb(path), (x + BORDER, y + BORDER))
            draw.multiline_text((x, y + THUMB + 2 * BORDER + 2), label, fill=(0, 0, 0), font=font, spacing=1)
    return atomic_write(Path(png), lambda tmp: sheet.save(tmp, format="PNG"))


def write_report(run_dir: str | Path, rows: Sequence[Mapping], figures: Mapping[str, str | Path],
                 title: str = "qkcopy report", notes: Sequence[str] = ()) -> Path:
    """report.md and report.html in `run_dir`: title, the results table, notes, then each figure (caption: path)."""
    run_dir = Path(run_dir)
    rel = {caption: os.path.relpath(Path(p).resolve(), run_dir.resolve()) for caption, p in figures.items()}
    md = [f"# {title}", "", format_table(rows), "", *[line for note in notes for line in (note, "")]]
    for caption, path in rel.items():
        md += [f"## {caption}", "", f"![{caption}]({path})", ""]
    page = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>",
            f"<h1>{html.escape(title)}</h1>", "<table>"]
    table = format_table(rows).splitlines()
    for i, line in enumerate(table):
        if i == 1:
            continue
        tag = "th" if i == 0 else "td"
        page.append("<tr>" + "".join(f"<{tag}>{html.escape(c.strip())}</{tag}>" for c in line.strip("|").split("|"))
                    + "</tr>")
    page += ["</table>", *[f"<p>{html.escape(note)}</p>" for note in notes]]
    for caption, path in rel.items():
        page += [f"<h2>{html.escape(caption)}</h2>", f"<img src='{html.escape(path)}' style='max-width:100%'>"]
    atomic_write(run_dir / "report.html", lambda tmp: Path(tmp).write_text("\n".join(page) + "\n", encoding="utf-8"))
    return atomic_write(run_dir / "report.md", lambda tmp: Path(tmp).write_text("\n".join(md), encoding="utf-8"))
