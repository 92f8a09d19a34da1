"""The AugLy compat module: each patch fixes its op, is idempotent, and the unpatched op is really broken."""

import os
import subprocess
import sys

import numpy as np
from photo_pool import digest, picture
from PIL import ImageFont, features

from qkcopy.data import augment as aug
from qkcopy.data.compat import _perspective_coeffs, patch_augly

BROKEN = """
import os
import augly.image.functional as F
from augly.utils import FONTS_DIR
from PIL import Image
img = Image.new("RGB", (64, 48), (9, 99, 199))
ostrich = os.path.join(FONTS_DIR, "OstrichSans-Black.ttf")
for name, call in [("perspective", lambda: F.perspective_transform(img, sigma=5.0)),
                   ("meme", lambda: F.meme_format(img, text="HI", caption_height=40)),
                   ("text", lambda: F.overlay_text(img, text=[0, 5, 9], font_file=ostrich))]:
    try:
        call()
        print(name, "ok")
    except Exception as err:
        print(name, type(err).__name__)
"""


def test_compat_patches_are_idempotent_and_fix_the_broken_ops():
    import augly.image.functional as F
    import augly.image.utils as imutils

    assert patch_augly() == patch_augly() == ("augly_fonts", "perspective_coeffs")
    assert imutils.compute_transform_coeffs is _perspective_coeffs
    img = picture()
    warped = F.perspective_transform(img, sigma=6.0, seed=4)
    assert warped.size == img.size and digest(warped) != digest(img)
    meme = F.meme_format(img, text="HELLO", caption_height=40)
    assert meme.size == (96, 104)
    caption = np.asarray(meme)[:40]
    assert (caption == 0).all(axis=-1).any() and (caption == 255).all(axis=-1).any()  # black text on white


def test_augly_fonts_basic_layout_and_getsize_multiline():
    import augly.image.functional as F

    patch_augly()
    font = F.ImageFont.truetype(aug.augly_utils.MEME_DEFAULT_FONT, 20)
    assert font.layout_engine == ImageFont.Layout.BASIC
    w1, h1 = font.getsize_multiline("AB")
    w2, h2 = font.getsize_multiline("AB\nAB")
    assert w1 == w2 > 0 and h2 > 1.8 * h1
    assert not hasattr(ImageFont.FreeTypeFont, "getsize_multiline")  # Pillow itself is untouched
    # character index 0 of OstrichSans is "\r": raqm raises on it, the BASIC layout draws the line
    ostrich = os.path.join(aug.augly_utils.FONTS_DIR, "OstrichSans-Black.ttf")
    out = F.overlay_text(picture(), text=[0, 5, 9], font_file=ostrich, font_size=0.3, color=(0, 0, 0))
    assert digest(out) != digest(picture())


def test_perspective_coefficients_map_corners():
    src = [(0, 0), (100, 0), (100, 80), (0, 80)]
    dst = [(3.0, -2.0), (95.0, 4.0), (104.0, 77.0), (-5.0, 83.0)]
    a, b, c, d, e, f, g, h = _perspective_coeffs(src, dst)
    for (sx, sy), (x, y) in zip(src, dst):  # PIL: output (x, y) samples input at these coordinates
        den = g * x + h * y + 1
        assert abs((a * x + b * y + c) / den - sx) < 1e-9 and abs((d * x + e * y + f) / den - sy) < 1e-9


def test_augly_is_broken_without_the_patch():
    """Guards the compat module: when this fails, AugLy or numpy/Pillow changed and compat may go."""
    out = subprocess.run([sys.executable, "-c", BROKEN], capture_output=True, text=True, check=True).stdout
    raqm = "RuntimeError" if features.check("raqm") else "ok"
    assert out.split("\n")[:3] == ["perspective AttributeError", "meme AttributeError", f"text {raqm}"]
