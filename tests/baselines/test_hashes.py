import io
import sys

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from photo_pool import make_photos
from qkcopy.baselines.hashes import HASH_DIMS, HASHES, hamming, hash_descriptors, pdq_bits, phash_bits, tiny_vector
from qkcopy.evaluation.knn import knn_search


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"), 6, seed=11)


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


SMALL_EDITS = {
    "jpeg70": lambda im: _jpeg(im, 70),
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
    "resize": lambda im: im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.BILINEAR),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(1)),
}


def _naive_hamming(a, b) -> int:
    return sum(1 for x, y in zip(a.tolist(), b.tolist()) if x != y)


def test_squared_l2_of_bit_vectors_is_hamming():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, size=(20, 256)).astype(np.float32)  # (N, E) in {0, 1}
    sqdist, index = knn_search(bits[:5], bits, k=20)  # every reference for 5 queries
    for qi in range(5):
        for d, j in zip(sqdist[qi], index[qi]):
            assert d == _naive_hamming(bits[qi], bits[j]) == hamming(bits[qi], bits[j])
    assert (sqdist[:, 0] == 0).all() and (index[:, 0] == np.arange(5)).all()


@pytest.mark.parametrize("method", ["pdq", "phash"])
def test_hash_bits_are_zero_one_of_the_right_length(method, photos):
    bits = HASHES[method](Image.open(photos[0]).convert("RGB"))
    assert bits.dtype == np.float32 and bits.shape == (HASH_DIMS[method],)
    assert set(np.unique(bits)) <= {0.0, 1.0} and 0 < bits.sum() < len(bits)


@pytest.mark.parametrize("fn, small, unrelated", [(pdq_bits, 31, 64), (phash_bits, 6, 16)])
def test_hashes_identical_zero_small_edits_close_unrelated_far(fn, small, unrelated, photos):
    imgs = [Image.open(p).convert("RGB") for p in photos]
    for img in imgs:
        assert hamming(fn(img), fn(img.copy())) == 0
        for name, edit in SMALL_EDITS.items():
            assert hamming(fn(img), fn(edit(img))) <= small, name
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert hamming(fn(imgs[i]), fn(imgs[j])) > unrelated


def test_tiny_vector_centred_unit_and_close_under_small_edits(photos):
    imgs = [Image.open(p).convert("RGB") for p in photos]
    for img in imgs:
        v = tiny_vector(img)
        assert v.shape == (256,) and v.dtype == np.float32
        assert abs(float(v.sum())) < 1e-4 and abs(float(np.linalg.norm(v)) - 1) < 1e-5
        # naive reference: the same 16x16 grey thumbnail, centred and scaled by hand
        g = np.asarray(img.convert("L").resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
        g = (g - g.mean()) / np.sqrt(((g - g.mean()) ** 2).sum())
        np.testing.assert_allclose(v, g, atol=1e-6)
        for name, edit in SMALL_EDITS.items():
            assert float(((v - tiny_vector(edit(img))) ** 2).sum()) < 0.05, name
    d = [float(((tiny_vector(a) - tiny_vector(b)) ** 2).sum()) for a in imgs for b in imgs if a is not b]
    assert min(d) > 0.5
    assert not tiny_vector(Image.new("RGB", (20, 20), (9, 9, 9))).any()  # flat image: zero vector


@pytest.mark.parametrize("method", sorted(HASHES))
def test_hash_descriptors_skip_bad_files(method, photos, tmp_path):
    from qkcopy.data.images import SkipLog

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    paths = [photos[0], bad, photos[1]]
    skips = SkipLog()
    vecs, kept = hash_descriptors(method, paths, skips)
    assert vecs.shape == (2, HASH_DIMS[method]) and vecs.dtype == np.float32
    assert kept.tolist() == [0, 2] and skips.count == 1 and skips.items[0][0] == bad
    np.testing.assert_array_equal(vecs[1], HASHES[method](Image.open(photos[1]).convert("RGB")))


def test_unknown_method_and_missing_package(photos, monkeypatch):
    with pytest.raises(ValueError, match="unknown hash method"):
        hash_descriptors("md5", photos)
    monkeypatch.setitem(sys.modules, "pdqhash", None)  # as if the [hashes] extra were not installed
    with pytest.raises(ImportError, match=r"\[hashes\]"):
        hash_descriptors("pdq", photos)
