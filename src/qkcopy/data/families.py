"""Edit families: how copies are grouped for per-family scores, and held-out edits written in plain PIL/numpy.

A family names a kind of edit a re-upload carries (a camera angle, a border, a screenshot, a collage…). Each
has the ops of the training query synthesis that belong to it (`FAMILY_OPS`: AugLy's, and those of
`qkcopy.data.extra_edits` that `data.synthesis: broad` adds; holding a family out of training removes them from
every recipe, `data.holdout_families`) and its own implementation here, written independently of both with
other parameters, which `make-benchmark --heldout` uses for queries. So a model trained with a family held out
meets it only in the benchmark: µAP per family shows how much of a score comes from the project's own edit
distribution. Two families have no AugLy op at all: "posterize" (colour quantisation) and "collage" (the image
as one tile among other photos); broad synthesis has one of each.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

FAMILY_OPS: dict[str, frozenset[str]] = {
    "perspective": frozenset({"perspective_transform", "skew"}),
    "rotation": frozenset({"rotate", "rotate_expand"}),
    "border": frozenset({"pad", "pad_square", "blur_frame"}),
    "recompression": frozenset({"encoding_quality", "pixelization", "jpeg_chain", "thumbnail"}),
    "screenshot": frozenset({"overlay_onto_screenshot", "meme_format", "app_frame"}),
    "collage": frozenset({"overlay_onto_background_image", "tile_grid"}),
    "mirror_crop": frozenset({"hflip", "vflip", "crop", "scale"}),
    "posterize": frozenset({"quantize_colours"}),
    "noise": frozenset({"random_noise", "blur", "sharpen"}),
    "sticker": frozenset({"overlay_emoji", "overlay_text", "overlay_stripes"}),
    "colour": frozenset({"color_jitter", "grayscale", "opacity", "tone_curve"}),
}
FAMILIES = tuple(FAMILY_OPS)
# Benchmark-only families: `make-benchmark --heldout` makes them (by name; not in "all", so that the benchmarks
# made with "all" stay as they were), training cannot hold them out on their own. "paste": the whole photo shrunk
# to 40–80 % of another photo's side and pasted into it; training's op of that kind is AugLy's, in "collage".
# "lowres": the whole photo as a low-resolution re-upload (its longer side 32–96 px, JPEG'd; kept small or
# enlarged again); training's ops of that kind shrink or pixelate (issue 21, part 4).
BENCHMARK_FAMILIES: dict[str, frozenset[str]] = {"paste": frozenset({"overlay_onto_background_image"}),
                                                 "lowres": frozenset({"scale", "pixelization", "thumbnail"})}


def family_of_op(op: str) -> str:
    """The family an AugLy op of the training synthesis belongs to."""
    for family, ops in FAMILY_OPS.items():
        if op in ops:
            return family
    raise ValueError(f"AugLy op {op!r} belongs to no family; add it to FAMILY_OPS")


def excluded_ops(families: Sequence[str]) -> frozenset[str]:
    """The AugLy ops that training must not use when `families` are held out."""
    known = {**FAMILY_OPS, **BENCHMARK_FAMILIES}
    unknown = sorted(set(families) - set(known))
    if unknown:
        raise ValueError(f"unknown edit families {unknown}; known: {list(known)}")
    return frozenset().union(*(known[f] for f in families))


def _fill(r: random.Random) -> tuple[int, int, int]:
    return r.choice(((0, 0, 0), (255, 255, 255), tuple(r.randrange(256) for _ in range(3))))


def _perspective(img: Image.Image, r: random.Random, others) -> Image.Image:
    w, h = img.size
    d = [r.uniform(0.05, 0.22) for _ in range(8)]  # how far each corner moves in, as a fraction of the side
    quad = (d[0] * w, d[1] * h, d[2] * w, h - d[3] * h, w - d[4] * w, h - d[5] * h, w - d[6] * w, d[7] * h)
    out = Image.new("RGB", img.size, _fill(r))
    warped = img.transform(img.size, Image.QUAD, quad, Image.BICUBIC)
    out.paste(warped.rotate(r.uniform(-4, 4), Image.BICUBIC, fillcolor=out.getpixel((0, 0))))
    return out.resize((w, h)) if r.random() < 0.5 else out.crop((0, 0, w, h))


def _rotation(img: Image.Image, r: random.Random, others) -> Image.Image:
    angle = r.choice((-1, 1)) * r.uniform(8, 40)
    if r.random() < 0.5:  # fill with a blurred copy, as phone apps do
        back = img.filter(ImageFilter.GaussianBlur(12))
        rotated = img.rotate(angle, Image.BICUBIC, expand=True)
        mask = Image.new("L", img.size, 255).rotate(angle, expand=True)
        back = back.resize(rotated.size)
        back.paste(rotated, (0, 0), mask)
        return back
    return img.rotate(angle, Image.BICUBIC, expand=r.random() < 0.7, fillcolor=_fill(r))


def _border(img: Image.Image, r: random.Random, others) -> Image.Image:
    w, h = img.size
    l, t, rr, b = (int(r.uniform(0.04, 0.35) * s) for s in (w, h, w, h))
    if r.random() < 0.4:
        back = img.resize((w + l + rr, h + t + b)).filter(ImageFilter.GaussianBlur(16))
        back.paste(img, (l, t))
        return back
    return ImageOps.expand(img, (l, t, rr, b), fill=_fill(r))


def _jpeg(img: Image.Image, quality: int, **options) -> Image.Image:
    """`img` after one JPEG encode and decode (`options`: Pillow's, e.g. subsampling)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, **options)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _recompression(img: Image.Image, r: random.Random, others) -> Image.Image:
    out = img
    for _ in range(r.randint(3, 6)):
        w, h = out.size
        if r.random() < 0.6:
            f = r.uniform(0.5, 0.95)
            out = out.resize((max(16, int(w * f)), max(16, int(h * f))), Image.BILINEAR)
        out = _jpeg(out, r.randint(12, 45), subsampling=r.choice((0, 2)))
    return out


def _screenshot(img: Image.Image, r: random.Random, others) -> Image.Image:
    """The image inside an app screen: status bar, header, a caption and buttons, on a phone-like canvas."""
    cw = max(240, int(img.width * r.uniform(1.1, 1.6)))
    scale = r.uniform(0.55, 0.9) * cw / img.width
    shown = img.resize((max(8, int(img.width * scale)), max(8, int(img.height * scale))), Image.BILINEAR)
    dark = r.random() < 0.5
    bg, fg = ((18, 18, 18), (230, 230, 230)) if dark else ((250, 250, 250), (30, 30, 30))
    ch = shown.height + int(cw * r.uniform(0.45, 0.8))
    canvas = Image.new("RGB", (cw, ch), bg)
    draw = ImageDraw.Draw(canvas)
    bar = int(cw * 0.06)
    draw.rectangle((0, 0, cw, bar), fill=tuple(r.randrange(256) for _ in range(3)))
    draw.text((8, bar + 8), "@user" + str(r.randrange(10**4)) + "  · " + str(r.randint(1, 59)) + "m", fill=fg)
    top = bar + int(cw * 0.12)
    canvas.paste(shown, ((cw - shown.width) // 2, top))
    y = top + shown.height + 10
    for _ in range(r.randint(2, 4)):
        draw.rounded_rectangle((10, y, int(cw * r.uniform(0.4, 0.95)), y + 10), 4, fill=fg)
        y += 18
    for i in range(4):
        draw.ellipse((12 + i * cw // 4, ch - 30, 32 + i * cw // 4, ch - 10), outline=fg, width=2)
    return canvas


def _collage(img: Image.Image, r: random.Random, others) -> Image.Image:
    rows, cols = r.choice(((2, 2), (1, 3), (3, 1), (2, 3)))
    tile = (max(32, img.width // max(1, cols - 1)), max(32, img.height // max(1, rows - 1)))
    gap = r.randint(0, 8)
    canvas = Image.new("RGB", (cols * tile[0] + (cols + 1) * gap, rows * tile[1] + (rows + 1) * gap), _fill(r))
    cells = [(i, j) for i in range(rows) for j in range(cols)]
    mine = r.randrange(len(cells))
    for k, (i, j) in enumerate(cells):
        src = img if k == mine or not others else others[r.randrange(len(others))]
        canvas.paste(ImageOps.fit(src, tile, Image.BILINEAR), (gap + j * (tile[0] + gap), gap + i * (tile[1] + gap)))
    return canvas


def _paste(img: Image.Image, r: random.Random, others) -> Image.Image:
    """The whole image shrunk to 40–80 % of another photo's side (its aspect kept) and pasted into it, sometimes
    framed or with a soft shadow; a gradient canvas when no other photo is given."""
    if others:
        back = others[r.randrange(len(others))].convert("RGB")
        back = back.resize((max(64, back.width), max(64, back.height)))
    else:
        back = Image.linear_gradient("L").resize(img.size).convert("RGB")
    scale = r.uniform(0.4, 0.8)
    f = scale * min(back.width / img.width, back.height / img.height)  # the copy's side ≤ scale × the photo's
    shown = img.resize((max(8, int(img.width * f)), max(8, int(img.height * f))), Image.BILINEAR)
    if r.random() < 0.3:
        shown = ImageOps.expand(shown, r.randint(2, 8), fill=_fill(r))
    x, y = r.randint(0, back.width - shown.width), r.randint(0, back.height - shown.height)
    out = back.copy()
    if r.random() < 0.3:
        shadow = Image.new("L", out.size, 0)
        ImageDraw.Draw(shadow).rectangle((x + 6, y + 6, x + shown.width + 6, y + shown.height + 6), fill=140)
        out.paste((0, 0, 0), (0, 0), shadow.filter(ImageFilter.GaussianBlur(5)))
    out.paste(shown, (x, y))
    return out


def _mirror_crop(img: Image.Image, r: random.Random, others) -> Image.Image:
    out = ImageOps.mirror(img)
    w, h = out.size
    cw, ch = int(w * r.uniform(0.5, 0.8)), int(h * r.uniform(0.5, 0.8))
    x, y = r.randint(0, w - cw), r.randint(0, h - ch)
    return out.crop((x, y, x + cw, y + ch))


def _posterize(img: Image.Image, r: random.Random, others) -> Image.Image:
    if r.random() < 0.5:
        return ImageOps.posterize(img, r.randint(2, 3))
    dither = Image.Dither.FLOYDSTEINBERG if r.random() < 0.5 else Image.Dither.NONE
    return img.quantize(colors=r.randint(4, 12), dither=dither).convert("RGB")


def _noise(img: Image.Image, r: random.Random, others) -> Image.Image:
    rng = np.random.default_rng(r.randrange(2**32))
    channels = 3 if r.random() < 0.5 else 1  # colour noise, or the same noise on every channel
    x = np.asarray(img, dtype=np.float32) + rng.normal(0.0, r.uniform(12, 35), size=(img.height, img.width, channels))
    salt = rng.random((img.height, img.width)) < r.uniform(0.005, 0.04)
    x[salt] = rng.choice((0.0, 255.0), size=(int(salt.sum()), 1))
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def _sticker(img: Image.Image, r: random.Random, others) -> Image.Image:
    out = img.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for _ in range(r.randint(2, 5)):
        s = int(min(w, h) * r.uniform(0.12, 0.3))
        x, y = r.randint(0, max(0, w - s)), r.randint(0, max(0, h - s))
        colour = tuple(r.randrange(256) for _ in range(3))
        if r.random() < 0.5:
            draw.ellipse((x, y, x + s, y + s), fill=colour, outline=(255, 255, 255), width=max(1, s // 12))
            draw.ellipse((x + s // 4, y + s // 3, x + s // 4 + s // 8, y + s // 3 + s // 8), fill=(0, 0, 0))
            draw.ellipse((x + 5 * s // 8, y + s // 3, x + 3 * s // 4, y + s // 3 + s // 8), fill=(0, 0, 0))
        else:
            draw.regular_polygon((x + s / 2, y + s / 2, s / 2), r.choice((3, 5, 6)), rotation=r.uniform(0, 90),
                                 fill=colour, outline=(0, 0, 0))
        draw.text((x, min(h - 12, y + s)), r.choice(("LOL", "wow", "#1", "new!", "omg")), fill=colour)
    return out


def _colour(img: Image.Image, r: random.Random, others) -> Image.Image:
    x = np.asarray(img, dtype=np.float32) / 255.0
    gamma = r.uniform(0.5, 1.8)
    tint = np.array([r.uniform(0.75, 1.25) for _ in range(3)], dtype=np.float32)
    x = np.clip((x ** gamma) * tint, 0, 1)
    if r.random() < 0.3:
        x = 1.0 - x  # inverted
    return Image.fromarray((x * 255).round().astype(np.uint8))


def _lowres(img: Image.Image, r: random.Random, others) -> Image.Image:
    w, h = img.size
    f = r.randint(32, 96) / max(w, h)
    small = img.resize((max(4, int(w * f)), max(4, int(h * f))), r.choice((Image.LANCZOS, Image.BOX, Image.NEAREST)))
    small = _jpeg(small, r.randint(35, 85))
    if r.random() < 0.35:
        return small
    up = r.uniform(2.0, 5.0)
    return small.resize((round(small.width * up), round(small.height * up)), r.choice((Image.NEAREST, Image.BICUBIC)))


EDITS: dict[str, Callable[[Image.Image, random.Random, Sequence[Image.Image]], Image.Image]] = {
    "perspective": _perspective, "rotation": _rotation, "border": _border, "recompression": _recompression,
    "screenshot": _screenshot, "collage": _collage, "mirror_crop": _mirror_crop, "posterize": _posterize,
    "noise": _noise, "sticker": _sticker, "colour": _colour, "paste": _paste, "lowres": _lowres,
}


def heldout_edit(img: Image.Image, family: str, seed: int, others: Sequence[Image.Image] = ()) -> Image.Image:
    """`img` edited by this module's implementation of `family`, drawn from `random.Random(seed)` only;
    `others` are photos for the collage's other tiles and the paste's background."""
    if family not in EDITS:
        raise ValueError(f"unknown edit family {family!r}; known: {list(EDITS)}")
    return EDITS[family](img.convert("RGB"), random.Random(seed), others).convert("RGB")
