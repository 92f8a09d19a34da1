"""Training-only edits that AugLy lacks: the "broad" query synthesis (`data.synthesis: broad`).

Re-uploads carry edits AugLy has no op for — a copy as one tile of a collage, colour quantisation, chains of
recompression, a rotation that keeps the whole picture, a blurred frame, an app's chrome around the picture.
These ops add them to the training recipes, beside AugLy's. They are written here, apart from
`qkcopy.data.families` (the held-out benchmark's implementations), with other parameters and other code, so a
family held out with `data.holdout_families` is absent from training in every form and the held-out benchmark
stays a test of edits training never saw. Each op belongs to one family (`families.FAMILY_OPS`).

Like AugLy's ops in `qkcopy.data.augment`, an op's params are drawn by `sample_extra_params(op, r, m)` from a
`random.Random` at magnitude m in (0, 1] and are JSON-serialisable; `apply_extra` is then deterministic.
"""

from __future__ import annotations

import io
import random
from functools import partial
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageOps

# op → sampling weight, on the scale of `augment.OPS`. Weight 0: drawn only when `data.op_weights` gives it one
# (issue 21, part 4: a low-resolution re-upload and strong tone curves, tried on the report benchmark).
EXTRA_OPS: dict[str, float] = {
    "tile_grid": 1.5, "quantize_colours": 0.7, "rotate_expand": 1.0, "jpeg_chain": 1.0, "blur_frame": 0.7,
    "app_frame": 0.7, "thumbnail": 0.0, "tone_curve": 0.0,
}
EXTRA_CONTAINERS = frozenset({"tile_grid", "app_frame"})  # they put the picture inside a bigger one


def uniform(r: random.Random, lo: float, hi: float) -> float:
    """A parameter drawn uniformly in [lo, hi], rounded to 4 decimals (JSON-stable)."""
    return round(r.uniform(lo, hi), 4)


def random_colour(r: random.Random) -> list[int]:
    return [r.randrange(256) for _ in range(3)]


def sample_extra_params(op: str, r: random.Random, m: float) -> dict[str, Any]:
    """Parameters of extra op `op` at magnitude `m`, drawn from `r` only."""
    u, colour = partial(uniform, r), partial(random_colour, r)

    if op == "tile_grid":  # rows × cols tiles, the copy in one; the others are crops of the background image
        rows, cols = r.choice(((1, 2), (2, 1), (2, 2), (2, 3), (3, 2), (3, 3)) if m > 0.5 else ((1, 2), (2, 1), (2, 2)))
        return {"rows": rows, "cols": cols, "cell": r.randrange(rows * cols), "gap": u(0, 0.06),
                "fill": colour(), "crop_seed": r.randrange(2**31)}
    if op == "quantize_colours":
        return {"colours": r.randint(max(3, round(24 - 20 * m)), 32), "dither": r.random() < 0.5}
    if op == "rotate_expand":
        return {"degrees": r.choice((-1, 1)) * u(3, 5 + 55 * m), "fill": colour(), "blurred": r.random() < 0.4}
    if op == "jpeg_chain":
        return {"qualities": [r.randint(max(8, round(70 - 55 * m)), 85) for _ in range(r.randint(2, 2 + round(3 * m)))],
                "shrink": u(1 - 0.45 * m, 1.0)}
    if op == "blur_frame":
        return {"margin": u(0.05, 0.05 + 0.45 * m), "radius": u(4, 20), "x": u(0, 1), "y": u(0, 1)}
    if op == "app_frame":
        return {"width": u(1.05, 1.2 + 0.5 * m), "top": u(0.08, 0.1 + 0.35 * m), "bottom": u(0.05, 0.1 + 0.5 * m),
                "dark": r.random() < 0.5, "accent": colour(), "lines": r.randint(1, 5), "seed": r.randrange(2**31)}
    if op == "thumbnail":  # the picture as a small thumbnail, JPEG'd, then (mostly) blown up again
        return {"side": r.randint(round(96 - 72 * m), 96), "quality": r.randint(round(80 - 50 * m), 90),
                "filter": r.choice(("box", "bilinear", "bicubic")), "enlarge": r.choice(("", "nearest", "bilinear",
                                                                                         "bicubic"))}
    if op == "tone_curve":  # gamma, per-channel gains and sometimes a negative
        return {"gamma": u(1 - 0.6 * m, 1 + 1.2 * m), "gains": [u(1 - 0.35 * m, 1 + 0.35 * m) for _ in range(3)],
                "negative": r.random() < 0.25 * m}
    raise ValueError(f"unknown extra edit {op!r}; expected one of {sorted(EXTRA_OPS)}")


def _tile_grid(img: Image.Image, p: dict, background: Image.Image | None) -> Image.Image:
    rows, cols, gap = p["rows"], p["cols"], p["gap"]
    tw, th = img.width, img.height  # every tile the copy's size: the collage is rows × cols copies big
    g = round(gap * max(tw, th))
    canvas = Image.new("RGB", (cols * tw + (cols + 1) * g, rows * th + (rows + 1) * g), tuple(p["fill"]))
    r = random.Random(p["crop_seed"])
    source = background if background is not None else img.filter(ImageFilter.GaussianBlur(6)).rotate(180)
    for cell in range(rows * cols):
        i, j = divmod(cell, cols)
        if cell == p["cell"]:
            tile = img
        else:  # a random crop of the other photo, so the copy's neighbours differ tile by tile
            w, h = source.size
            cw, ch = max(8, round(w * r.uniform(0.35, 0.8))), max(8, round(h * r.uniform(0.35, 0.8)))
            x, y = r.randint(0, w - cw), r.randint(0, h - ch)
            tile = source.crop((x, y, x + cw, y + ch)).resize((tw, th), Image.BILINEAR)
        canvas.paste(tile, (g + j * (tw + g), g + i * (th + g)))
    return canvas


def _quantize(img: Image.Image, p: dict) -> Image.Image:
    dither = Image.Dither.FLOYDSTEINBERG if p["dither"] else Image.Dither.NONE
    return img.quantize(colors=p["colours"], method=Image.Quantize.MEDIANCUT, dither=dither).convert("RGB")


def _rotate_expand(img: Image.Image, p: dict) -> Image.Image:
    rotated = img.convert("RGBA").rotate(p["degrees"], Image.BILINEAR, expand=True)
    if p["blurred"]:
        back = img.resize(rotated.size, Image.BILINEAR).filter(ImageFilter.GaussianBlur(10)).convert("RGBA")
    else:
        back = Image.new("RGBA", rotated.size, (*p["fill"], 255))
    return Image.alpha_composite(back, rotated).convert("RGB")


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    """`img` after one JPEG encode and decode at `quality`."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _jpeg_chain(img: Image.Image, p: dict) -> Image.Image:
    out = img
    for quality in p["qualities"]:
        if p["shrink"] < 1.0:
            out = out.resize((max(16, round(out.width * p["shrink"] ** 0.5)),
                              max(16, round(out.height * p["shrink"] ** 0.5))), Image.BICUBIC)
        out = _jpeg(out, quality)
    return out


def _thumbnail(img: Image.Image, p: dict) -> Image.Image:
    w, h = img.size
    f = min(1.0, p["side"] / max(w, h))
    filters = {"box": Image.BOX, "nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
    small = img.resize((max(8, round(w * f)), max(8, round(h * f))), filters[p["filter"]])
    small = _jpeg(small, p["quality"])
    return small.resize((w, h), filters[p["enlarge"]]) if p["enlarge"] else small


def _tone_curve(img: Image.Image, p: dict) -> Image.Image:
    gamma, gains = p["gamma"], p["gains"]
    luts = [[min(255, round(255 * (i / 255) ** gamma * g)) for i in range(256)] for g in gains]
    if p["negative"]:
        luts = [[255 - v for v in lut] for lut in luts]
    return img.point([v for lut in luts for v in lut])


def _blur_frame(img: Image.Image, p: dict) -> Image.Image:
    w, h = img.size
    mw, mh = round(w * p["margin"]), round(h * p["margin"])
    back = ImageOps.fit(img, (w + 2 * mw, h + 2 * mh), Image.BILINEAR).filter(ImageFilter.GaussianBlur(p["radius"]))
    back.paste(img, (round(2 * mw * p["x"]), round(2 * mh * p["y"])))
    return back


def _app_frame(img: Image.Image, p: dict) -> Image.Image:
    w, h = img.size
    cw = round(w * p["width"])
    top, bottom = round(h * p["top"]), round(h * p["bottom"])
    bg, fg = ((12, 12, 14), (220, 220, 220)) if p["dark"] else ((255, 255, 255), (40, 40, 40))
    canvas = Image.new("RGB", (cw, h + top + bottom), bg)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, cw, max(2, top // 3)), fill=tuple(p["accent"]))
    r = random.Random(p["seed"])
    canvas.paste(img, ((cw - w) // 2, top))
    y = top + h + 4
    for _ in range(p["lines"]):
        if y + 6 > canvas.height:
            break
        draw.rectangle((6, y, round(cw * r.uniform(0.3, 0.9)), y + 5), fill=fg)
        y += 12
    return canvas


def apply_extra(img: Image.Image, op: str, params: dict, background: Image.Image | None = None) -> Image.Image:
    """`img` edited by extra op `op` with `params` (from `sample_extra_params`)."""
    img = img.convert("RGB")
    if op == "tile_grid":
        return _tile_grid(img, params, None if background is None else background.convert("RGB"))
    edits = {"quantize_colours": _quantize, "rotate_expand": _rotate_expand, "jpeg_chain": _jpeg_chain,
             "blur_frame": _blur_frame, "app_frame": _app_frame, "thumbnail": _thumbnail, "tone_curve": _tone_curve}
    if op not in edits:
        raise ValueError(f"unknown extra edit {op!r}; expected one of {sorted(EXTRA_OPS)}")
    return edits[op](img, params)
