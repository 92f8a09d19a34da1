"""The one place that repairs AugLy 1.0.0 for the numpy and Pillow versions qkcopy runs on.

AugLy 1.0.0 (its last release) predates numpy 1.24 and Pillow 10. Reading `augly.image.functional`, two
calls break, and its text drawing has one more defect; nothing else there uses a removed API:

1. `perspective_transform` → `augly.image.utils.compute_transform_coeffs` builds its matrix with
   `dtype=np.float`, an alias numpy removed in 1.24 (AttributeError). Fix: AugLy's module attribute
   `augly.image.utils.compute_transform_coeffs`, which `perspective_transform` looks up at call time,
   is pointed to `_perspective_coeffs` below, which solves the same 8 equations in float64. numpy itself
   is not touched. (The bounding-box helpers in `augly.image.utils.bboxes` also say `np.float`; qkcopy
   never passes bounding boxes, so they are left alone.)
2. `meme_format` measures its caption with `FreeTypeFont.getsize_multiline`, removed in Pillow 10
   (AttributeError). `overlay_text` in AugLy 1.0.0 draws with `ImageDraw.text` and needs no such fix.
3. Pillow lays text out with libraqm when the system has libfribidi, else with its BASIC engine. With
   raqm, `overlay_text` raises RuntimeError on some bundled fonts (OstrichSans maps a character index
   to "\r", which raqm refuses), and the same edit gives different pixels on machines with and without
   fribidi. Fix for 2 and 3: the name `ImageFont` inside `augly.image.functional` is pointed to
   `_AuglyImageFont`, whose `truetype` returns a `FreeTypeFont` subclass that always uses the BASIC
   layout and has `getsize_multiline` again (computed with `multiline_textbbox`, the documented
   replacement). Pillow itself is not touched; only AugLy's fonts change.

`patch_augly()` applies these, only where needed, and is idempotent; `qkcopy.augment` calls it before
using AugLy. Tests run each repaired op and check, in a fresh process, that AugLy alone still fails.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

_applied: set[str] = set()


def _perspective_coeffs(src_coords, dst_coords) -> np.ndarray:
    """The 8 coefficients of PIL's PERSPECTIVE transform mapping each `dst` corner onto its `src` corner.

    PIL maps an output pixel (x, y) to the input pixel ((a x + b y + c) / (g x + h y + 1),
    (d x + e y + f) / (g x + h y + 1)); four corner pairs give 8 linear equations in a..h.
    """
    rows, rhs = [], []
    for (sx, sy), (dx, dy) in zip(src_coords, dst_coords):
        rows.append([dx, dy, 1.0, 0.0, 0.0, 0.0, -sx * dx, -sx * dy])
        rows.append([0.0, 0.0, 0.0, dx, dy, 1.0, -sy * dx, -sy * dy])
        rhs.extend([sx, sy])
    a = np.asarray(rows, dtype=np.float64)  # (8, 8)
    b = np.asarray(rhs, dtype=np.float64)  # (8,)
    coeffs, *_ = np.linalg.lstsq(a, b, rcond=None)  # exact for 4 corners in general position
    return coeffs  # (8,)


class _BasicLayoutFont(ImageFont.FreeTypeFont):
    """A FreeType font with the BASIC layout engine and Pillow < 10's `getsize_multiline`."""

    def __init__(self, font, size: float = 10, index: int = 0, encoding: str = "", layout_engine=None):
        super().__init__(font, size, index, encoding, layout_engine=ImageFont.Layout.BASIC)

    def getsize_multiline(self, text, direction=None, spacing=4, features=None, language=None,
                          stroke_width=0) -> tuple[int, int]:
        """(width, height) of multi-line `text`, as Pillow < 10 returned it."""
        draw = ImageDraw.Draw(Image.new("L", (1, 1)))
        _, _, right, bottom = draw.multiline_textbbox(
            (0, 0), text, font=self, spacing=spacing, direction=direction, features=features,
            language=language, stroke_width=stroke_width,
        )
        return math.ceil(right), math.ceil(bottom)


class _AuglyImageFont:
    """Stands in for the `PIL.ImageFont` module inside `augly.image.functional` (fixes 2 and 3)."""

    @staticmethod
    def truetype(font, size: float = 10, index: int = 0, encoding: str = "", layout_engine=None):
        return _BasicLayoutFont(font, size, index, encoding)

    def __getattr__(self, name: str):
        return getattr(ImageFont, name)


def _numpy_float_missing() -> bool:
    try:
        np.float  # noqa: B018 — the alias AugLy uses
    except AttributeError:
        return True
    return False


def patch_augly() -> tuple[str, ...]:
    """Repair AugLy's calls broken by numpy ≥ 1.24 and Pillow ≥ 10 (see above); safe to call repeatedly.

    Returns the names of all patches in effect.
    """
    import augly.image.functional as functional
    import augly.image.utils as imutils

    if "perspective_coeffs" not in _applied and _numpy_float_missing():
        imutils.compute_transform_coeffs = _perspective_coeffs
        _applied.add("perspective_coeffs")
        log.debug("compat: augly.image.utils.compute_transform_coeffs replaced (np.float removed)")
    if "augly_fonts" not in _applied:
        functional.ImageFont = _AuglyImageFont()
        _applied.add("augly_fonts")
        log.debug("compat: AugLy fonts use BASIC layout and have getsize_multiline (removed in Pillow 10)")
    return tuple(sorted(_applied))
