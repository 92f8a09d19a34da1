"""Query synthesis: seeded random compositions of AugLy edits, like the ISC2021 / DISC21 queries.

A *recipe* is a list of `Edit(op, params)` drawn by `sample_recipe(seed, strength)` from
`random.Random(seed)` alone; every random choice AugLy would otherwise make from the global `random` /
`np.random` state (emoji, text, font, noise, perspective corners) is made here and passed explicitly, so
the same (image, seed) gives the same pixels on any machine with the same library versions. Params are
JSON-serialisable (relative sizes, asset names relative to AugLy's bundled assets).

Strengths set how many edits a recipe holds (light 1–2, medium 3–4, hard 5–7) and their magnitude; "mixed"
draws one of the three per recipe (1 : 2 : 1). `broad=True` adds the non-AugLy ops of `qkcopy.data.extra_edits`.
Images are capped to `max_side` pixels before, during and after the edits; output is always RGB.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import augly.image.functional as F
import augly.utils as augly_utils
import numpy as np
from PIL import Image

from qkcopy.data.compat import patch_augly
from qkcopy.data.extra_edits import (EXTRA_CONTAINERS, EXTRA_OPS, apply_extra, random_colour, sample_extra_params,
                                     uniform)
from qkcopy.data.images import ImageError, load_image
from qkcopy.seeds import derive_seed

log = logging.getLogger(__name__)
patch_augly()

STRENGTHS = ("light", "medium", "hard", "mixed")
NUM_OPS = {"light": (1, 2), "medium": (3, 4), "hard": (5, 7)}  # inclusive range of edits per recipe
MAGNITUDE = {"light": 0.35, "medium": 0.65, "hard": 1.0}  # scales every op's parameter range
# op → sampling weight. Ops in CONTAINERS put the image inside a bigger picture; a recipe holds ≤ 1.
OPS: dict[str, float] = {
    "crop": 3.0, "scale": 1.0, "pad": 1.0, "pad_square": 0.5, "rotate": 1.5, "hflip": 1.5, "vflip": 0.5,
    "perspective_transform": 1.0, "skew": 1.0, "color_jitter": 2.0, "grayscale": 1.0, "blur": 1.5,
    "sharpen": 0.7, "random_noise": 1.0, "pixelization": 1.0, "encoding_quality": 2.5, "opacity": 0.7,
    "overlay_text": 1.5, "overlay_emoji": 1.5, "meme_format": 0.7, "overlay_stripes": 0.7,
    "overlay_onto_screenshot": 0.7, "overlay_onto_background_image": 1.5,
}
CONTAINERS = frozenset({"meme_format", "overlay_onto_screenshot", "overlay_onto_background_image"})
MIN_SIDE = 8  # an edit leaving a side shorter than this is treated as failed
MEME_MIN_CAPTION = 40  # pixels: AugLy's meme font search fails below about this on two lines
MEME_WORDS = tuple("WHEN YOU ME MY THE NOBODY EVERY MONDAY CAT DOG FRIDAY BOSS SAYS LOOKS LIKE AGAIN WHY LOL OK "
                   "SO REAL MOOD".split())


@dataclass(frozen=True)
class Edit:
    """One AugLy edit: `op` names a key of OPS; `params` are JSON-serialisable."""

    op: str
    params: dict

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "params": self.params}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Edit:
        return cls(op=d["op"], params=dict(d["params"]))


@lru_cache(maxsize=None)
def _assets(kind: str) -> tuple[str, ...]:
    """AugLy's bundled fonts usable by overlay_text (each needs its .pkl of characters), emoji, screenshots."""
    if kind == "fonts":
        names = os.listdir(augly_utils.FONTS_DIR)
        return tuple(sorted(n for n in names if n.endswith(".ttf") and n[:-4] + ".pkl" in names))
    if kind == "emojis":
        root = Path(augly_utils.EMOJI_DIR)
        return tuple(sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")))
    with open(augly_utils.BBOXES_PATH) as f:
        return tuple(sorted(json.load(f)))


def sample_params(op: str, r: random.Random, m: float) -> dict[str, Any]:
    """Parameters of `op` at magnitude `m` in (0, 1], drawn from `r` only."""
    u, colour = partial(uniform, r), partial(random_colour, r)

    def sign() -> int:
        return r.choice((-1, 1))

    if op == "crop":
        w, h = u(1 - 0.55 * m, 1 - 0.1 * m), u(1 - 0.55 * m, 1 - 0.1 * m)
        x1, y1 = u(0, 1 - w), u(0, 1 - h)
        return {"x1": x1, "y1": y1, "x2": round(x1 + w, 4), "y2": round(y1 + h, 4)}
    if op == "scale":
        return {"factor": u(1 - 0.7 * m, 1 - 0.1 * m)}
    if op == "pad":
        return {"w_factor": u(0.03, 0.03 + 0.35 * m), "h_factor": u(0.03, 0.03 + 0.35 * m), "color": colour()}
    if op == "pad_square":
        return {"color": colour()}
    if op == "rotate":
        return {"degrees": sign() * u(2, 2 + 43 * m)}
    if op in ("hflip", "vflip"):
        return {}
    if op == "perspective_transform":  # sigma relative to the longer side; corners from `seed`
        return {"sigma": u(0.01, 0.01 + 0.07 * m), "seed": r.randrange(2**31)}
    if op == "skew":
        return {"skew_factor": sign() * u(0.05, 0.05 + 0.45 * m), "axis": r.randrange(2)}
    if op == "color_jitter":
        return {"brightness_factor": u(1 - 0.5 * m, 1 + 0.6 * m), "contrast_factor": u(1 - 0.5 * m, 1 + 0.8 * m),
                "saturation_factor": u(1 - 0.8 * m, 1 + 1.5 * m)}
    if op == "grayscale":
        return {"mode": r.choice(("luminosity", "average"))}
    if op == "blur":
        return {"radius": u(0.5, 0.5 + 3.5 * m)}
    if op == "sharpen":
        return {"factor": u(1.5, 1.5 + 8.5 * m)}
    if op == "random_noise":
        return {"var": u(0.001, 0.001 + 0.03 * m), "seed": r.randrange(2**31)}
    if op == "pixelization":
        return {"ratio": u(0.55 - 0.4 * m, 0.75 - 0.35 * m)}
    if op == "encoding_quality":
        return {"quality": r.randint(max(5, round(60 - 50 * m)), round(90 - 40 * m))}
    if op == "opacity":  # faded onto a plain colour
        return {"level": u(1 - 0.5 * m, 1 - 0.15 * m), "background": colour()}
    if op == "overlay_text":
        lines = [[r.randrange(1000) for _ in range(r.randint(4, 14))] for _ in range(r.randint(1, 1 + round(2 * m)))]
        return {"text": lines, "font": r.choice(_assets("fonts")), "font_size": u(0.06, 0.06 + 0.16 * m),
                "color": colour(), "opacity": u(0.6, 1.0), "x_pos": u(0, 0.5), "y_pos": u(0, 0.75)}
    if op == "overlay_emoji":
        return {"emoji": r.choice(_assets("emojis")), "emoji_size": u(0.1, 0.1 + 0.35 * m), "opacity": u(0.6, 1.0),
                "x_pos": u(0, 0.8), "y_pos": u(0, 0.8)}
    if op == "meme_format":
        text = "\n".join(" ".join(r.choice(MEME_WORDS) for _ in range(r.randint(2, 4)))
                         for _ in range(r.randint(1, 2)))
        bg = r.choice(([255, 255, 255], [0, 0, 0], colour()))
        return {"text": text, "caption_height": u(0.15, 0.15 + 0.2 * m), "meme_bg_color": bg,
                "text_color": [255 - c for c in bg]}
    if op == "overlay_stripes":
        return {"line_width": u(0.1, 0.1 + 0.5 * m), "line_color": colour(), "line_angle": u(-90, 90),
                "line_density": u(0.1, 0.1 + 0.6 * m), "line_type": r.choice(("solid", "dashed", "dotted")),
                "line_opacity": u(0.2, 0.2 + 0.6 * m)}
    if op == "overlay_onto_screenshot":
        return {"template": r.choice(_assets("templates")), "crop_src_to_fit": r.random() < 0.5}
    if op == "overlay_onto_background_image":  # bg_pick chooses a caller's background; bg_seed makes one
        size = u(0.9 - 0.5 * m, 0.95 - 0.3 * m)
        return {"overlay_size": size, "x_pos": u(0, 1 - size), "y_pos": u(0, 1 - size),
                "opacity": r.choice((1.0, u(0.7, 1.0))), "bg_pick": u(0, 1), "bg_seed": r.randrange(2**31)}
    raise ValueError(f"unknown augmentation op {op!r}; expected one of {sorted(OPS)}")


def sample_recipe(seed: int, strength: str = "medium", exclude: frozenset[str] = frozenset(),
                  broad: bool = False, weights: Mapping[str, float] | None = None) -> list[Edit]:
    """A random recipe of distinct edits from `random.Random(seed)`, JPEG last; never an op in `exclude` (held-out
    families); `broad` adds `qkcopy.data.extra_edits`' ops (without it recipes are those of earlier versions);
    `weights` (`data.op_weights`) replace ops' sampling weights (0 removes an op); ops of weight 0 are never drawn."""
    if strength not in STRENGTHS:
        raise ValueError(f"unknown strength {strength!r}; expected one of {STRENGTHS}")
    r = random.Random(int(seed))
    strength = r.choices(STRENGTHS[:3], weights=(1, 2, 1))[0] if strength == "mixed" else strength
    lo, hi = NUM_OPS[strength]
    containers = CONTAINERS | EXTRA_CONTAINERS
    pool = {**({**OPS, **EXTRA_OPS} if broad else OPS), **(weights or {})}
    pool = {op: w for op, w in pool.items() if w > 0 and op not in exclude}
    ops: list[str] = []
    for _ in range(r.randint(lo, hi)):
        if not pool:
            break
        op = r.choices(list(pool), weights=list(pool.values()))[0]
        ops.append(op)
        drop = containers | {op} if op in containers else {op}
        pool = {k: w for k, w in pool.items() if k not in drop}
    r.shuffle(ops)
    ops.sort(key=lambda o: o == "encoding_quality")  # stable: only moves JPEG to the end
    m = MAGNITUDE[strength]
    return [Edit(op, sample_extra_params(op, r, m) if op in EXTRA_OPS else sample_params(op, r, m)) for op in ops]


def cap_size(img: Image.Image, max_side: int) -> Image.Image:
    """`img` shrunk (bicubic, aspect kept) so that its longer side is at most `max_side`."""
    w, h = img.size
    s = max_side / max(w, h)
    return img if s >= 1 else img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)


def _flatten(img: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*colour, 255)), rgba).convert("RGB")


def _synthetic_background(seed: int, size: tuple[int, int]) -> Image.Image:
    """A smooth random colour field, for copy-paste edits when the caller gives no background."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)  # (rows, cols, RGB)
    w, h = size
    return Image.fromarray(grid).resize((max(64, round(w * 1.3)), max(64, round(h * 1.3))), Image.Resampling.BICUBIC)


def _apply_edit(img: Image.Image, e: Edit, background: Image.Image | None) -> Image.Image:
    p = e.params
    if e.op in EXTRA_OPS:
        return apply_extra(img, e.op, p, background)
    if e.op in ("crop", "scale", "pad", "rotate", "hflip", "vflip", "skew", "color_jitter", "grayscale",
                "blur", "sharpen", "pixelization", "encoding_quality", "overlay_stripes"):
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in p.items()}
        return getattr(F, e.op)(img, **kwargs)
    if e.op == "pad_square":
        return F.pad_square(img, color=tuple(p["color"]))
    if e.op == "perspective_transform":
        return F.perspective_transform(img, sigma=p["sigma"] * max(img.size), seed=p["seed"])
    if e.op == "random_noise":  # AugLy seeds the global np.random: restore its state afterwards
        state = np.random.get_state()
        try:
            return F.random_noise(img, var=p["var"], seed=p["seed"])
        finally:
            np.random.set_state(state)
    if e.op == "opacity":
        return _flatten(F.opacity(img.convert("RGBA"), level=p["level"]), tuple(p["background"]))
    if e.op == "overlay_text":
        return F.overlay_text(img, text=p["text"], font_file=os.path.join(augly_utils.FONTS_DIR, p["font"]),
                              font_size=p["font_size"], opacity=p["opacity"], color=tuple(p["color"]),
                              x_pos=p["x_pos"], y_pos=p["y_pos"])
    if e.op == "overlay_emoji":
        return F.overlay_emoji(img, emoji_path=os.path.join(augly_utils.EMOJI_DIR, p["emoji"]),
                               opacity=p["opacity"], emoji_size=p["emoji_size"], x_pos=p["x_pos"], y_pos=p["y_pos"])
    if e.op == "meme_format":
        caption = max(MEME_MIN_CAPTION, round(p["caption_height"] * img.height))
        return F.meme_format(img, text=p["text"], caption_height=caption, text_color=tuple(p["text_color"]), meme_bg_color=tuple(p["meme_bg_color"]))
    if e.op == "overlay_onto_screenshot":
        return F.overlay_onto_screenshot(
            img, template_filepath=os.path.join(augly_utils.SCREENSHOT_TEMPLATES_DIR, p["template"]),
            crop_src_to_fit=p["crop_src_to_fit"])
    if e.op == "overlay_onto_background_image":
        bg = background if background is not None else _synthetic_background(p["bg_seed"], img.size)
        return F.overlay_onto_background_image(img, background_image=bg.convert("RGB"), opacity=p["opacity"],
                                               overlay_size=p["overlay_size"], x_pos=p["x_pos"], y_pos=p["y_pos"])
    raise ValueError(f"unknown augmentation op {e.op!r}; expected one of {sorted(OPS)}")


def apply_recipe(img: Image.Image, recipe: list[Edit], background: Image.Image | None = None,
                 *, max_side: int = 512) -> Image.Image:
    """`img` edited by each edit of `recipe` in turn; an edit that fails on this image is logged and skipped."""
    if not isinstance(img, Image.Image):
        raise ValueError(f"expected a PIL image, got {type(img).__name__}")
    out = cap_size(img.convert("RGB"), max_side)
    bg = None if background is None else cap_size(background.convert("RGB"), max_side)
    for e in recipe:
        try:
            edited = cap_size(_apply_edit(out, e, bg).convert("RGB"), max_side)
        except Exception as err:  # AugLy asserts / PIL errors on odd sizes: skip this edit only
            log.warning("augment: %s skipped on a %dx%d image (%s: %s)", e.op, *out.size, type(err).__name__, err)
            continue
        if min(edited.size) < MIN_SIDE:
            log.warning("augment: %s skipped: it left a %dx%d image", e.op, *edited.size)
            continue
        out = edited
    return out


def make_query(img: Image.Image, seed: int, strength: str = "medium", background: Image.Image | None = None,
               exclude: frozenset[str] = frozenset(), broad: bool = False,
               weights: Mapping[str, float] | None = None) -> tuple[Image.Image, list[Edit]]:
    """A synthetic copy of `img` and the recipe that made it (without the ops in `exclude`)."""
    recipe = sample_recipe(seed, strength, exclude, broad, weights)
    return apply_recipe(img, recipe, background), recipe


@dataclass(frozen=True)
class QueryTransform:
    """Torch-friendly query synthesis: `t(img, index, epoch)` edits `img` with a seed from (base_seed, index, epoch).

    `backgrounds` are image files for the copy-paste edit (one is loaded only when a recipe needs it).
    """

    strength: str = "medium"
    base_seed: int = 0
    backgrounds: tuple[Path, ...] = ()
    max_side: int = 512

    def __post_init__(self) -> None:
        if self.strength not in STRENGTHS:
            raise ValueError(f"unknown strength {self.strength!r}; expected one of {STRENGTHS}")

    def query(self, img: Image.Image, index: int, epoch: int = 0) -> tuple[Image.Image, list[Edit]]:
        recipe = sample_recipe(derive_seed(self.base_seed, index, epoch), self.strength)
        background = None
        for e in recipe:
            if e.op == "overlay_onto_background_image" and self.backgrounds:
                path = self.backgrounds[int(e.params["bg_pick"] * len(self.backgrounds)) % len(self.backgrounds)]
                try:
                    background = load_image(path)
                except ImageError as err:  # fall back to a synthetic background
                    log.warning("augment: background skipped: %s", err)
        return apply_recipe(img, recipe, background, max_side=self.max_side), recipe

    def __call__(self, img: Image.Image, index: int, epoch: int = 0) -> Image.Image:
        return self.query(img, index, epoch)[0]
