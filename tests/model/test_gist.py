import csv

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from qkcopy.model.gist import GIST_DIM, GIST_SIZE, Gist, compute_gist, gist_input
from qkcopy.data.images import ImageError


def _synthetic(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Drawn shapes on gradients with noise. (n, 3, size, size) float32 0..255."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        yy, xx = np.mgrid[0:size, 0:size] / size
        base = 60 + 120 * (rng.uniform() * xx + rng.uniform() * yy)[..., None] * rng.uniform(0.3, 1, 3)
        img = Image.fromarray(np.clip(base + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = rng.integers(0, size // 2, 2)
            x1, y1 = (x0, y0) + rng.integers(4, size // 2, 2)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.rectangle if rng.uniform() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=colour)
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1))
    return torch.stack(out)


def _naive_gist(img: np.ndarray, fc: float = 4.0, orientations=(8, 8, 4), blocks: int = 4) -> np.ndarray:
    """lear_gist for one (S, S, 3) image, written from the formulas with loops and numpy, float64."""
    s = img.shape[0]

    def grid(n):  # frequencies i - n/2 with DC in the middle, then moved to the corner
        f = np.arange(n) - n / 2.0
        fx, fy = np.meshgrid(f, f)
        return np.fft.fftshift(fx), np.fft.fftshift(fy)

    x = np.log(img.astype(np.float64) + 1.0)
    x = np.pad(x, ((5, 5), (5, 5), (0, 0)), mode="symmetric")
    fx, fy = grid(s + 10)
    gfc = np.exp(-(fx**2 + fy**2) / (fc / np.sqrt(np.log(2))) ** 2)
    for c in range(3):
        x[..., c] -= np.real(np.fft.ifft2(np.fft.fft2(x[..., c]) * gfc))
    local = np.sqrt(np.abs(np.fft.ifft2(np.fft.fft2(x.mean(axis=2) ** 2) * gfc)))
    x = (x / (0.2 + local[..., None]))[5:-5, 5:-5]
    fx, fy = grid(s)
    fr, theta = np.sqrt(fx**2 + fy**2), np.arctan2(fy, fx)
    bounds = [i * s // blocks for i in range(blocks + 1)]
    out = []
    for c in range(3):
        spectrum = np.fft.fft2(x[..., c])
        for i, n in enumerate(orientations, start=1):
            for j in range(1, n + 1):
                t = theta + np.pi * (j - 1) / n
                t[t < -np.pi] += 2 * np.pi
                t[t > np.pi] -= 2 * np.pi
                b, cc = 0.3 / 1.85 ** (i - 1), 16 * n**2 / 32**2
                g = np.exp(-10 * 0.35 * (fr / s / b - 1) ** 2 - 2 * cc * np.pi * t**2)
                response = np.abs(np.fft.ifft2(spectrum * g))
                for bx in range(blocks):
                    for by in range(blocks):
                        cell = response[bounds[by] : bounds[by + 1], bounds[bx] : bounds[bx + 1]]
                        out.append(cell.mean())
    return np.array(out)


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).norm(dim=1) / b.norm(dim=1)


def _reference_inputs(root, size: int) -> torch.Tensor:
    pngs = sorted((root / f"inputs_{size}").glob("*.png"))
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in pngs]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("size", [32, 64, 128])
def test_matches_lear_gist_reference(gist_reference, size):
    ref = np.load(gist_reference / f"gist_{size}.npy")
    got = Gist(size)(_reference_inputs(gist_reference, size)).numpy()
    assert got.shape == ref.shape == (12, GIST_DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)  # measured max |error| ~1e-6


def test_gist_input_reproduces_reference_inputs(gist_reference, shared_photos):
    with open(gist_reference / "sources.csv") as f:
        rows = list(csv.DictReader(f))
    for size in (32, 64, 128):
        for row in rows:
            with Image.open(shared_photos / "eval" / row["source_photo"]) as photo:
                got = gist_input(photo, size)
            with Image.open(gist_reference / f"inputs_{size}" / row["input_png"]) as png:
                want = torch.from_numpy(np.asarray(png.convert("RGB"), dtype=np.float32).copy()).permute(2, 0, 1)
            assert torch.equal(got, want), (size, row["source_photo"])


@pytest.mark.parametrize("size", [32, 42])  # 42: blocks of 10 and 11 px, odd padded side 52
def test_matches_naive_reference(size):
    x = _synthetic(2, size, seed=size)
    got = Gist(size)(x).numpy()
    for i in range(2):
        want = _naive_gist(x[i].permute(1, 2, 0).numpy())
        np.testing.assert_allclose(got[i], want, rtol=0, atol=2e-6)


def test_shape_dtype_and_batch_consistency():
    x = _synthetic(20, GIST_SIZE)
    gist = Gist()
    assert gist.cpu_chunk < 20  # the CPU path splits this batch into chunks
    batched = gist(x)
    assert batched.shape == (20, GIST_DIM) and batched.dtype == torch.float32
    single = torch.cat([gist(x[i : i + 1]) for i in range(20)])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)
    gist.cpu_chunk = 64  # one piece
    torch.testing.assert_close(gist(x), batched, rtol=0, atol=1e-6)
    assert gist(x[:0]).shape == (0, GIST_DIM)
    assert Gist(32, orientations=(4, 4), blocks=2)(x).shape == (20, 3 * 8 * 4)


def test_autocast_computes_in_float32():
    x = _synthetic(3, GIST_SIZE)
    gist = Gist()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = gist(x)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, gist(x), rtol=0, atol=1e-7)


@pytest.mark.parametrize("value", [0.0, 1.0, 128.0, 255.0])
def test_constant_image_has_no_response(value):
    # the prefilter removes the mean (gfc is 1 at DC), so a flat image leaves nothing for the Gabor bank
    out = Gist()(torch.full((2, 3, GIST_SIZE, GIST_SIZE), value))
    assert out.abs().max() < 1e-6


def test_brightness_changes_little_but_content_and_flip_change_a_lot():
    x = _synthetic(8, GIST_SIZE, seed=3)
    gist = Gist()
    base = gist(x)
    # log then high-pass: a gain is nearly an additive constant, which the prefilter removes. Measured here:
    # 0.014 (×0.8) and 0.046 (×0.5) relative L2 change (0.036 and 0.116 on the reference photos), against
    # ≥ 0.58 between different images and ≥ 0.50 for a horizontal flip
    assert _rel(gist(x * 0.8), base).max() < 0.03
    assert _rel(gist(x * 0.5), base).max() < 0.1
    assert _rel(base[1:], base[:-1]).min() > 0.3
    assert _rel(gist(x.flip(-1)), base).min() > 0.3


def test_bad_input_raises():
    gist = Gist()
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        gist(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        gist(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        gist(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="floating-point"):
        gist(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        gist(np.zeros((1, 3, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match=">= 8"):
        Gist(4)


def test_compute_gist_from_paths_and_images(tmp_path):
    rng = np.random.default_rng(0)
    paths, images = [], []
    for i, (w, h) in enumerate([(60, 40), (33, 70), (32, 32)]):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
        images.append(img)
    want = Gist()(torch.stack([gist_input(img) for img in images])).numpy()
    for source in (paths, [str(p) for p in paths], images):
        got = compute_gist(source, batch_size=2, progress=False)
        assert got.shape == (3, GIST_DIM) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert compute_gist([], progress=False).shape == (0, GIST_DIM)
    with pytest.raises(ImageError, match="missing.png"):
        compute_gist([tmp_path / "missing.png"], progress=False)


def test_gist_input_resize_and_crop():
    img = Image.new("RGB", (100, 50), (10, 20, 30))
    x = gist_input(img, 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[:, 0, 0], torch.tensor([10.0, 20.0, 30.0]))
    grey = gist_input(Image.new("L", (40, 80), 77), 16)
    assert grey.shape == (3, 16, 16) and torch.all(grey == 77)
