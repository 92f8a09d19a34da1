"""Synthetic photos for benchmark tests: colour gradients with random ellipses and rectangles.

Each image differs from the others (own gradient, own shapes), so copy detection on them is meaningful.
"""

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make_photos(folder: Path, n: int, seed: int = 0, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(72, 128)), int(rng.integers(72, 128))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * rng.uniform(0.5, 3) + yy * rng.uniform(0.5, 3) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], axis=-1)  # (h, w, 3)
        img = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
            x1, y1 = x0 + int(rng.integers(5, w // 2)), y0 + int(rng.integers(5, h // 2))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        path = folder / f"{prefix}_{i:03d}.jpg"
        img.save(path, quality=95)
        paths.append(path)
    return paths


def picture(w: int = 96, h: int = 64) -> Image.Image:
    """Asymmetric colour gradient with a square, so flips and colour edits all change pixels."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([255 * x / w, 255 * y / h, 128 + 0 * x], axis=-1).astype(np.uint8)
    a[h // 4 : h // 2, w // 5 : w // 3] = (250, 250, 0)
    return Image.fromarray(a)


def digest(img: Image.Image) -> str:
    """Pixels and size of an image as one hash, to compare edits for identity."""
    return hashlib.sha256(np.asarray(img).tobytes() + repr(img.size).encode()).hexdigest()
