"""Helpers shared by test files: drawn pictures, the CLI's one-line refusals, a free loopback port."""

import socket
from pathlib import Path

from qkcopy.cli import main

FAST = ["--workers", "0", "--device", "cpu"]  # CLI flags that keep a test in one process on the CPU


def refused(argv: list[str], capsys, *needles, extra: list[str] = FAST) -> str:
    """Run the CLI; assert it failed with one error line holding every needle; return that line."""
    assert main(argv + extra) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"qkcopy {argv[0]}: error: "), err
    for needle in needles:
        assert str(needle) in line, (needle, line)
    return line


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def draw_images(folder: Path, n: int, seed: int = 0, size: int = 96, prefix: str = "img") -> list[Path]:
    """n distinct JPEG pictures (gradient background, random shapes) named <prefix>000.jpg …"""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        c0, c1 = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(2)]
        img = Image.linear_gradient("L").resize((size, size)).convert("RGB")
        img = Image.composite(Image.new("RGB", img.size, c0), Image.new("RGB", img.size, c1), img.convert("L"))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x0, y0 = rng.randrange(size - 20), rng.randrange(size - 20)
            box = (x0, y0, x0 + rng.randrange(10, 40), y0 + rng.randrange(10, 40))
            fill = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        path = folder / f"{prefix}{i:03d}.jpg"
        img.save(path, quality=92)
        paths.append(path)
    return paths


def textured_picture(seed: int, size=(300, 240)):
    """A picture with corners and blobs everywhere (SIFT needs texture): blurred noise plus random shapes."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size[1] // 6, size[0] // 6, 3), dtype=np.uint8)
    img = Image.fromarray(noise).resize(size, Image.BICUBIC).filter(ImageFilter.GaussianBlur(1))
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x, y = rng.integers(0, size[0] - 20), rng.integers(0, size[1] - 20)
        s = int(rng.integers(6, 30))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + s, y + s), fill=fill)
    return img
