"""Demo images that need no download: photo-like pictures drawn from a seed, plus sample photos matplotlib ships.

Each drawn picture layers, all from its own random generator (run seed, image index):
  * a background: multi-scale smooth noise through a random colour map, a sky/ground landscape with a noisy
    horizon, or a radial glow;
  * soft blurred colour blobs; 3–10 shapes (ellipses, polygons, rectangles) filled with a flat colour, a
    linear gradient, stripes or a checkerboard, some with a drop shadow; 0–2 lines of random text in a font
    AugLy ships; then film grain, a slight blur and a vignette.
Pictures differ in layout, colours and textures, so an edited copy is still recognisable, while several share
backgrounds of the same kind, so telling them apart is not trivial.

The real photos are matplotlib's sample data (mpl-data/sample_data): the Grace Hopper portrait, the gift-box
icon, the logo, an MRI slice, and the two elevation models shaded as terrain (the Jacksboro model as four
disjoint tiles, each in its own colour map). They come first, then drawn pictures up to `n`.

Letters: H×W image pixels, K colour-map anchors.
"""

from __future__ import annotations

import gzip
import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm
from qkcopy.io import atomic_write

log = logging.getLogger(__name__)

SIZES = ((320, 240), (240, 320), (288, 288), (352, 224), (256, 320), (320, 256))  # (width, height)
FONT_FAMILIES = ("IBMPlexSans", "IBMPlexSerif", "Montserrat-", "OpenSans", "Raleway", "Ubuntu", "SourceSansPro",
                 "Titillium", "PlayfairDisplay-", "Quicksand", "Lobster", "Pacifico", "Impact", "Chunkfive")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
JPEG_QUALITY = 92


def _sample_path(name: str) -> Path:
    import matplotlib
    return Path(matplotlib.get_data_path()) / "sample_data" / name


@lru_cache(maxsize=1)
def _font_files() -> tuple[str, ...]:
    try:
        from augly.utils import FONTS_DIR
        names = sorted(os.listdir(FONTS_DIR))
    except (ImportError, OSError):
        return ()
    return tuple(str(Path(FONTS_DIR) / n) for n in names
                 if n.endswith(".ttf") and n.startswith(FONT_FAMILIES))


def _font(rng: np.random.Generator, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    files = _font_files()
    if files:
        return ImageFont.truetype(files[int(rng.integers(len(files)))], size)
    return ImageFont.load_default(size=size)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A colour of moderate saturation (HSV), bright or dark, rarely the neon of uniform RGB."""
    import colorsys
    h, s, v = rng.random(), rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.95)
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))


def _anchors(rng: np.random.Generator, k: int) -> np.ndarray:
    return np.array([_colour(rng) for _ in range(k)], np.float32)  # (K, 3)


def smooth_noise(rng: np.random.Generator, h: int, w: int, octaves: int = 5) -> np.ndarray:
    """(H, W) float32 in [0, 1]: random grids of 2, 4, 8, … cells upsampled bicubically, amplitudes halving."""
    field = np.zeros((h, w), np.float32)
    amplitude, persistence = 1.0, float(rng.uniform(0.4, 0.7))
    for octave in range(octaves):
        cells = 2 ** (octave + 1)
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        field += amplitude * np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC))
        amplitude *= persistence
    lo, hi = field.min(), field.max()
    return (field - lo) / max(hi - lo, 1e-6)  # (H, W)


def colourise(field: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Map a (H, W) field in [0, 1] through K colour anchors (K, 3) → (H, W, 3) uint8, piecewise linear."""
    if field.ndim != 2 or anchors.ndim != 2 or anchors.shape[1] != 3:
        raise ValueError(f"colourise needs field (H, W) and anchors (K, 3), got {field.shape} and {anchors.shape}")
    stops = np.linspace(0.0, 1.0, len(anchors))
    rgb = [np.interp(field, stops, anchors[:, c]) for c in range(3)]
    return np.clip(np.stack(rgb, axis=-1), 0, 255).astype(np.uint8)  # (H, W, 3)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    kind = rng.choice(["noise", "landscape", "glow"])
    anchors = _anchors(rng, int(rng.integers(2, 5)))  # (K, 3)
    if kind == "noise":
        return Image.fromarray(colourise(smooth_noise(rng, h, w), anchors))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / np.float32(max(h, w))
    if kind == "glow":
        cx, cy = rng.uniform(0.2, 0.8, 2)
        field = np.clip(np.hypot(xx - cx, yy - cy) * rng.uniform(1.0, 2.0) + 0.3 * smooth_noise(rng, h, w), 0, 1)
        return Image.fromarray(colourise(field / max(field.max(), 1e-6), anchors))
    horizon = h * rng.uniform(0.3, 0.7) + h * 0.15 * (smooth_noise(rng, 1, w, 4)[0] - 0.5)  # (W,) row per column
    sky = colourise(yy / max(yy.max(), 1e-6), _anchors(rng, 2))
    ground = colourise(smooth_noise(rng, h, w), anchors)
    below = np.arange(h)[:, None] > horizon[None, :]  # (H, W) bool
    return Image.fromarray(np.where(below[..., None], ground, sky))


def _fill(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A w×h RGB fill for a shape: flat, linear gradient, stripes or checkerboard."""
    kind = rng.choice(["flat", "gradient", "stripes", "checker"])
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    if kind == "flat":
        return Image.new("RGB", (w, h), tuple(int(v) for v in a))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    t = xx * np.cos(angle) + yy * np.sin(angle)  # (H, W) distance along the fill direction
    if kind == "gradient":
        mix = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind == "stripes":
        mix = (np.floor(t / rng.uniform(3, 14)) % 2).astype(np.float32)
    else:
        cell = rng.uniform(4, 16)
        mix = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    rgb = a * (1 - mix[..., None]) + b * mix[..., None]  # (H, W, 3)
    return Image.fromarray(rgb.astype(np.uint8))


def _shape_mask(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    rx, ry = rng.uniform(0.05, 0.3) * w, rng.uniform(0.05, 0.3) * h
    kind = rng.choice(["ellipse", "polygon", "rectangle"])
    if kind == "ellipse":
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    elif kind == "rectangle":
        draw.rounded_rectangle((cx - rx, cy - ry, cx + rx, cy + ry), radius=float(rng.uniform(0, min(rx, ry))),
                               fill=255)
    else:
        k = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = rng.uniform(0.4, 1.0, k)
        draw.polygon([(cx + rx * r * np.cos(a), cy + ry * r * np.sin(a)) for a, r in zip(angles, radii)], fill=255)
    return mask


def _blobs(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(1, 5))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.08, 0.3) * max(w, h)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(*_colour(rng), int(rng.integers(80, 200))))
    layer = layer.filter(ImageFilter.GaussianBlur(float(rng.uniform(6, 20))))
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def _shapes(img: Image.Image, rng: np.random.Generator) -> None:
    w, h = img.size
    for _ in range(int(rng.integers(3, 11))):
        mask = _shape_mask(rng, w, h)
        if rng.random() < 0.3:  # drop shadow
            shadow = mask.filter(ImageFilter.GaussianBlur(4)).point(lambda v: v * 0.5)
            img.paste((0, 0, 0), (int(rng.integers(2, 8)), int(rng.integers(2, 8))), shadow)
        box = mask.getbbox()
        if box is not None:  # fill only the shape's bounding box
            img.paste(_fill(rng, box[2] - box[0], box[3] - box[1]), box[:2], mask.crop(box))


def _text(img: Image.Image, rng: np.random.Generator) -> None:
    w, h = img.size
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 3))):
        word = "".join(rng.choice(list(LETTERS), int(rng.integers(3, 10))))
        font = _font(rng, int(rng.integers(14, 44)))
        xy = (float(rng.uniform(0, 0.7 * w)), float(rng.uniform(0, 0.85 * h)))
        outline = int(rng.integers(0, 3))
        draw.text(xy, word, fill=_colour(rng), font=font, stroke_width=outline, stroke_fill=_colour(rng))


def _finish(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    pixels = np.asarray(img, np.float32)  # (H, W, 3)
    pixels = pixels + rng.normal(0, rng.uniform(2, 7), pixels.shape).astype(np.float32)  # film grain
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    pixels *= (1 - rng.uniform(0, 0.35) * np.clip(r2 / 2, 0, 1))[..., None]  # vignette
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_picture(seed: int, index: int) -> Image.Image:
    """The drawn picture `index` of run `seed` (see the module docstring); a pure function of both."""
    rng = np.random.default_rng([seed, index])
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    img = _blobs(_background(rng, w, h), rng)
    _shapes(img, rng)
    _text(img, rng)
    return _finish(img, rng)


def _fit(img: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(img.size)
    if scale >= 1:
        return img
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)


def _on_white(path: Path, pad: int = 0) -> Image.Image:
    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    canvas = Image.new("RGBA", (rgba.width + 2 * pad, rgba.height + 2 * pad), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, (pad, pad))
    return canvas.convert("RGB")


def _terrain(elevation: np.ndarray, cmap: str, upscale: int = 1) -> Image.Image:
    from matplotlib import colormaps
    from matplotlib.colors import LightSource
    rgb = LightSource(azdeg=315, altdeg=45).shade(elevation.astype(np.float64), cmap=colormaps[cmap],
                                                  blend_mode="soft", vert_exag=0.05)  # (H, W, 4) in [0, 1]
    img = Image.fromarray((rgb[..., :3] * 255).astype(np.uint8))
    return img.resize((img.width * upscale, img.height * upscale), Image.BICUBIC) if upscale > 1 else img


def sample_photos() -> list[tuple[str, Image.Image]]:
    """(name, RGB image) of the real pictures in matplotlib's sample data; [] when it is not installed."""
    try:
        photos = [("grace_hopper", _on_white(_sample_path("grace_hopper.jpg"))),
                  ("gift_box", _on_white(_sample_path("Minduka_Present_Blue_Pack.png"), pad=24)),
                  ("logo", _on_white(_sample_path("logo2.png"), pad=40))]
        with gzip.open(_sample_path("s1045.ima.gz")) as f:
            mri = np.frombuffer(f.read(), ">u2").reshape(256, 256).astype(np.float32)  # (H, W) 16-bit slice
        photos.append(("mri", Image.fromarray((255 * mri / max(mri.max(), 1)).astype(np.uint8)).convert("RGB")))
        dem = np.load(_sample_path("jacksboro_fault_dem.npz"))["elevation"]  # (344, 403)
        h2, w2 = dem.shape[0] // 2, dem.shape[1] // 2
        tiles = [dem[:h2, :w2], dem[:h2, w2:], dem[h2:, :w2], dem[h2:, w2:]]
        for i, (tile, cmap) in enumerate(zip(tiles, ("gist_earth", "terrain", "copper", "viridis"))):
            photos.append((f"terrain_{i}", _terrain(tile, cmap, upscale=2)))
        photos.append(("topobathy", _terrain(np.load(_sample_path("topobathy.npz"))["topo"], "ocean", upscale=3)))
    except (OSError, KeyError, ValueError) as err:
        log.warning("matplotlib sample photos unavailable (%s); using drawn pictures only", err)
        return []
    return photos


def _save_jpeg(img: Image.Image, path: Path) -> None:
    atomic_write(path, lambda tmp: img.save(tmp, format="JPEG", quality=JPEG_QUALITY))


def _draw_and_save(job: tuple[int, int, int, str]) -> None:
    seed, index, max_side, path = job
    _save_jpeg(_fit(draw_picture(seed, index), max_side), Path(path))


def generate_demo_images(out_dir: str | Path, n: int, seed: int = 0, max_side: int = 320, real: bool = True,
                         workers: int = 1) -> list[Path]:
    """Write n JPEGs demo_0000.jpg … into `out_dir` (the sample photos first when `real`); same args, same bytes.

    workers > 1 draws pictures in that many processes (each picture is a pure function of (seed, index)).
    """
    if n < 1 or max_side < 16 or workers < 1:
        raise ValueError(f"need n >= 1, max_side >= 16 and workers >= 1, got n={n}, max_side={max_side}, "
                         f"workers={workers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"demo_{i:04d}.jpg" for i in range(n)]
    photos = sample_photos()[:n] if real else []
    for (_, img), path in zip(photos, paths):
        _save_jpeg(_fit(img, max_side), path)
    jobs = [(seed, i, max_side, str(paths[i])) for i in range(len(photos), n)]
    bar = tqdm(total=n, initial=len(photos), desc="demo images", unit="img", leave=False)
    if workers == 1:
        for job in jobs:
            _draw_and_save(job)
            bar.update()
    else:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_draw_and_save, jobs, chunksize=8):
                bar.update()
    bar.close()
    log.info("wrote %d demo images (%d sample photos) to %s", n, len(photos), out_dir)
    return paths
