import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from qkcopy.data.images import (
    ImageDataset,
    ImageError,
    SkipLog,
    collate_skipping,
    iter_images,
    load_image,
    scan_images,
)


def _halves(w=40, h=20) -> Image.Image:
    """Left half red, right half blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(a)


def _jpeg_bytes(img, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _expect_error(path, *words, **kw):
    with pytest.raises(ImageError) as info:
        load_image(path, **kw)
    assert info.value.path == path
    assert str(path) in str(info.value)
    for w in words:
        assert w in str(info.value)
    return info.value


def test_rgb_jpeg_loads_fully(tmp_path):
    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg_bytes(_halves(), quality=95))
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (40, 20)
    assert np.abs(np.asarray(img)[10, 5].astype(int) - (255, 0, 0)).max() < 12
    path.unlink()  # fully decoded: nothing is read lazily afterwards
    assert np.asarray(img).shape == (20, 40, 3)


def test_truncated_jpeg(tmp_path):
    data = _jpeg_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "truncated")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    _expect_error(path, "0 bytes")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    _expect_error(path, "not an image")


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "absent.png", "no such file")


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    img = load_image(path)
    assert img.mode == "RGB"
    assert np.abs(np.asarray(img)[8, 8].astype(int) - (255, 0, 0)).max() < 8


def test_16bit_png_is_scaled_to_8bit(tmp_path):
    path = tmp_path / "deep.png"
    a = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I")
    img = load_image(path)
    assert img.mode == "RGB"
    assert np.asarray(img)[0, :, 0].tolist() == [0, 100, 128, 255]  # round(v / 257)
    assert (np.asarray(img)[0, :, 0] == np.asarray(img)[0, :, 2]).all()


def test_palette_with_transparency_on_white(tmp_path):
    path = tmp_path / "pal.png"
    p = Image.new("P", (4, 2), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    p.putpixel((1, 0), 1)
    p.save(path, transparency=0)  # index 0 (black) is transparent
    img = np.asarray(load_image(path))
    assert img[0, 1].tolist() == [255, 0, 0]
    assert img[0, 0].tolist() == [255, 255, 255]  # transparent black → white, not black


@pytest.mark.parametrize("mode,value", [("RGBA", (255, 0, 0, 128)), ("LA", (60, 200))])
def test_alpha_is_composited_on_white(tmp_path, mode, value):
    path = tmp_path / f"alpha_{mode}.png"
    Image.new(mode, (3, 3), value).save(path)
    got = np.asarray(load_image(path))[1, 1].astype(int)
    colour = np.array(value[:-1] * (3 if mode == "LA" else 1), float)
    a = value[-1] / 255.0
    expected = colour * a + 255.0 * (1 - a)  # "over" onto white, by hand
    assert np.abs(got - expected).max() <= 1
    if mode == "RGBA":
        assert got.tolist() == [255, 127, 127]


def test_grey_and_bilevel_become_rgb(tmp_path):
    for mode, value, want in [("L", 77, 77), ("1", 1, 255)]:
        path = tmp_path / f"m{mode}.png"
        Image.new(mode, (5, 5), value).save(path)
        img = load_image(path)
        assert img.mode == "RGB" and np.asarray(img)[2, 2].tolist() == [want] * 3


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    _halves(40, 20).save(path, exif=exif, quality=95)
    assert Image.open(path).size == (40, 20)
    img = load_image(path)
    assert img.size == (20, 40)  # dimensions swap
    a = np.asarray(img).astype(int)
    assert np.abs(a[5, 10] - (255, 0, 0)).max() < 12  # stored left half (red) is now on top
    assert np.abs(a[35, 10] - (0, 0, 255)).max() < 12


def test_decompression_bomb_with_small_max_pixels(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (30, 20)).save(path)
    _expect_error(path, "600 pixels", "limit of 500", max_pixels=500)
    assert load_image(path, max_pixels=600).size == (30, 20)


@pytest.mark.parametrize("size", [(12, 12), (30, 30)])  # PIL warning (>100 px) and PIL error (>200 px)
def test_pil_decompression_bomb_guard_becomes_image_error(tmp_path, monkeypatch, size):
    path = tmp_path / "bomb.png"
    Image.new("RGB", size).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    _expect_error(path, "decompression bomb")


def _folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "b" / "z.png")
    Image.new("RGB", (8, 8)).save(root / "a.JPG", format="JPEG")
    Image.new("RGB", (8, 8)).save(root / ".hidden" / "x.png")
    (root / "c.jpg").write_bytes(b"")  # bad
    (root / "readme.txt").write_text("not listed")
    return root


def test_scan_images_sorted_recursive_by_extension(tmp_path):
    root = _folder(tmp_path)
    assert [p.relative_to(root).as_posix() for p in scan_images(root)] == ["a.JPG", "b/z.png", "c.jpg"]


def test_scan_images_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        scan_images(tmp_path / "empty")


def test_folder_load_skips_counts_and_names(tmp_path, caplog):
    root = _folder(tmp_path)
    skips = SkipLog()
    got = [(i, p.name) for i, p, img in iter_images(scan_images(root), skips)]
    assert got == [(0, "a.JPG"), (1, "z.png")]
    assert skips.count == 1 and skips.items[0][0] == root / "c.jpg"
    with caplog.at_level(logging.INFO):
        skips.report(logging.getLogger("t"), "photos")
    assert "skipped 1 unreadable photos" in caplog.text and "c.jpg (empty file (0 bytes))" in caplog.text


def test_skip_report_truncates_after_20(caplog):
    skips = SkipLog()
    for k in range(25):
        skips.add(ImageError(f"f{k:02d}.jpg", "bad"))
    with caplog.at_level(logging.INFO):
        skips.report(logging.getLogger("t"))
    assert "skipped 25" in caplog.text and "f19.jpg" in caplog.text and "f20.jpg" not in caplog.text
    assert "... and 5 more" in caplog.text


def _to_tensor(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W)


def test_dataset_and_collate_skip_bad_items(tmp_path):
    root = _folder(tmp_path)
    paths = scan_images(root)  # a.JPG, b/z.png, c.jpg (bad)
    ds = ImageDataset(paths, _to_tensor)
    assert ds[2] == (2, None) and "0 bytes" in ds.errors[2]
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_skipping)
    indices, pixels, skipped = next(iter(loader))
    assert indices.dtype == torch.long and indices.tolist() == [0, 1]
    assert pixels.shape == (2, 3, 8, 8)
    assert pixels[1, :, 0, 0].tolist() == [10.0, 20.0, 30.0]
    assert skipped == [2]
    fresh = ImageDataset(paths, _to_tensor)  # as in the main process when a worker hit the bad file
    skips = SkipLog()
    fresh.record_skips(skipped, skips)
    assert skips.items == [(paths[2], "empty file (0 bytes)")]


def test_collate_tuple_and_all_bad():
    two = lambda k: (torch.full((2,), float(k)), torch.tensor(k))  # noqa: E731
    idx, (a, b), skipped = collate_skipping([(0, two(0)), (1, None), (2, two(2))])
    assert idx.tolist() == [0, 2] and a.shape == (2, 2) and b.tolist() == [0, 2] and skipped == [1]
    idx, data, skipped = collate_skipping([(4, None), (5, None)])
    assert idx.shape == (0,) and data is None and skipped == [4, 5]
