"""The demo's drawn images: deterministic, distinct, a function of (seed, index)."""

import numpy as np
from PIL import Image

from qkcopy.data.demo_images import draw_picture, generate_demo_images, sample_photos


def _grey(path, side=32):
    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize((side, side), Image.BILINEAR), dtype=np.float32)


def test_demo_images_are_deterministic_and_distinct(tmp_path):
    a = generate_demo_images(tmp_path / "a", 24, seed=1, max_side=128)
    b = generate_demo_images(tmp_path / "b", 24, seed=1, max_side=128, workers=2)
    assert [p.name for p in a] == [f"demo_{i:04d}.jpg" for i in range(24)]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    n_real = len(sample_photos())
    assert n_real == 9  # Grace Hopper, gift box, logo, MRI, 4 terrain tiles, topobathy
    for p in a:
        with Image.open(p) as im:
            assert im.format == "JPEG" and max(im.size) <= 128
    thumbs = np.stack([_grey(p) for p in a])  # (24, 32, 32)
    diff = np.abs(thumbs[:, None] - thumbs[None]).mean(axis=(2, 3))  # (24, 24) mean absolute grey difference
    off_diagonal = diff[~np.eye(24, dtype=bool)]
    assert off_diagonal.min() > 8.0  # no two images alike
    other = generate_demo_images(tmp_path / "c", 24, seed=2, max_side=128)
    assert a[0].read_bytes() == other[0].read_bytes()  # the sample photos do not depend on the seed
    assert a[n_real].read_bytes() != other[n_real].read_bytes()  # drawn ones do


def test_drawn_pictures_are_a_function_of_seed_and_index():
    x, y = np.asarray(draw_picture(0, 5)), np.asarray(draw_picture(0, 5))
    assert x.shape[2] == 3 and np.array_equal(x, y)
    assert not np.array_equal(np.asarray(draw_picture(0, 6))[:16, :16], x[:16, :16])
