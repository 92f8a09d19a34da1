"""Synthetic query copies of a folder of images, their recipes and a contact sheet (`qkcopy augment`).

For each of the first `limit` images, `n` edited copies `<stem>_q<k>.jpg` (copy k uses seed
`derive_seed(seed, index, k)`), `recipes.json` listing every edit, and `contact_sheet.png`: originals in
the first column, their copies beside them, each labelled with its edits, for a person to look at.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from qkcopy.data.augment import STRENGTHS, Edit, QueryTransform, derive_seed
from qkcopy.data.images import SkipLog, iter_images, scan_images
from qkcopy.io import atomic_write

log = logging.getLogger(__name__)

CELL = 160  # contact-sheet thumbnail box, pixels
LABEL = 30  # height of the text band under each thumbnail


@dataclass(frozen=True)
class AugmentSummary:
    written: int  # query images written
    skipped: int  # unreadable source images
    recipes: Path
    sheet: Path


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _label(edits: list[Edit] | str) -> str:
    return edits if isinstance(edits, str) else ", ".join(e.op for e in edits) or "(no edit)"


def contact_sheet(rows: list[list[tuple[Image.Image, str]]], cell: int = CELL) -> Image.Image:
    """A grid image: one row per list, each cell a thumbnail with its label wrapped beneath."""
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (cols * cell, len(rows) * (cell + LABEL)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    per_line = cell // 6  # characters per label line with the default font
    for y, row in enumerate(rows):
        for x, (img, text) in enumerate(row):
            thumb = img.copy()
            thumb.thumbnail((cell - 4, cell - 4))
            left, top = x * cell, y * (cell + LABEL)
            sheet.paste(thumb, (left + (cell - thumb.width) // 2, top + (cell - thumb.height) // 2))
            lines = [text[i:i + per_line] for i in range(0, len(text), per_line)][:3]
            draw.multiline_text((left + 2, top + cell), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=0)
    return sheet


def augment_folder(images: Path, out: Path, *, n: int = 4, strength: str = "medium", seed: int = 0,
                   limit: int | None = 16) -> AugmentSummary:
    """Write `n` queries per image of the first `limit` images under `images` (all when limit is None/0)."""
    if n < 1:
        raise ValueError(f"-n must be at least 1, got {n}")
    if strength not in STRENGTHS:
        raise ValueError(f"unknown strength {strength!r}; expected one of {STRENGTHS}")
    paths = scan_images(images)
    if limit:
        paths = paths[:limit]
    out.mkdir(parents=True, exist_ok=True)
    transform = QueryTransform(strength, seed, backgrounds=tuple(paths))
    skips, entries, rows = SkipLog(), [], []
    for i, path, img in tqdm(iter_images(paths, skips), total=len(paths), desc="augment", unit="img"):
        stem = path.relative_to(images).with_suffix("").as_posix().replace("/", "__")
        row = [(img, path.name)]
        for k in range(n):
            query, recipe = transform.query(img, i, k)
            name = f"{stem}_q{k}.jpg"
            atomic_write(out / name, _encode(query, "JPEG", quality=95))
            entries.append({"source": path.relative_to(images).as_posix(), "query": name,
                            "seed": derive_seed(seed, i, k), "edits": [e.to_dict() for e in recipe]})
            row.append((query, _label(recipe)))
        rows.append(row)
    skips.report(log, "images")
    if not rows:
        raise ValueError(f"none of the {len(paths)} images under {images} could be read")
    recipes = out / "recipes.json"
    doc = {"strength": strength, "seed": seed, "n": n, "queries": entries}
    atomic_write(recipes, (json.dumps(doc, indent=1) + "\n").encode())
    sheet = out / "contact_sheet.png"
    atomic_write(sheet, _encode(contact_sheet(rows), "PNG"))
    log.info("wrote %d queries, %s and %s", len(entries), recipes, sheet)
    return AugmentSummary(written=len(entries), skipped=skips.count, recipes=recipes, sheet=sheet)
