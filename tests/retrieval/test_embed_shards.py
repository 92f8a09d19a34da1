"""Embedding a collection in resumable shards: Q for queries, K for references, merge equals one shot."""

import json
import os

import numpy as np
import pytest
import torch

from qkcopy.retrieval.embed_shards import embed_folder, image_ids, read_descriptors, read_meta
from qkcopy.data.transforms import image_pair
from qkcopy.retrieval.descriptors import read_isc_h5, read_npy
from qkcopy.data.images import load_image
from qkcopy.model.trained import load_trained


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tiny_run):
    return load_trained(tiny_run)


def _direct(model, trained, paths):
    """Naive reference: each image through `model(pixels, gist256(gist_pixels))`, one at a time."""
    rows = []
    with torch.no_grad():
        for p in paths:
            pixels, gist_pixels = image_pair(load_image(p), trained.cfg.model.image_size)
            rows.append(model(pixels[None], trained.gist256(gist_pixels[None]))[0].numpy())
    return np.stack(rows)


def test_sides_use_q_and_k_and_files_agree(trained, make_images, tmp_path):
    paths = make_images(tmp_path / "imgs", 5)
    q = embed_folder(trained, paths, "query", tmp_path / "out" / "q.h5", batch_size=2, workers=0)
    k = embed_folder(trained, paths, "reference", tmp_path / "out" / "k", batch_size=2, workers=0)
    np.testing.assert_allclose(q.vectors, _direct(trained.q, trained, paths), atol=1e-5)
    np.testing.assert_allclose(k.vectors, _direct(trained.k, trained, paths), atol=1e-5)
    assert np.abs(q.vectors - k.vectors).max() > 1e-4  # Q and K differ
    ids, vectors = read_isc_h5(tmp_path / "out" / "q.h5")
    assert ids == [p.stem for p in paths] and np.array_equal(vectors, q.vectors)
    ids, vectors = read_npy(tmp_path / "out" / "k")
    assert ids == [p.stem for p in paths] and np.array_equal(vectors, k.vectors)
    meta = read_meta(tmp_path / "out" / "k.npy")
    assert meta["side"] == "reference" and meta["fingerprint"] == trained.fingerprint and meta["n"] == 5
    assert not (tmp_path / "out" / "q.shards").exists()  # shards removed after the merge by default


def test_sharded_resume_skips_done_shards_and_equals_one_shot(trained, make_images, tmp_path):
    paths = make_images(tmp_path / "imgs", 7)
    bad = tmp_path / "imgs" / "img003.jpg"
    bad.write_bytes(b"not a jpeg")  # an unreadable file in shard 1: skipped, and remembered by the shard
    one = embed_folder(trained, paths, "reference", tmp_path / "one", shard_size=100, workers=0)
    first = embed_folder(trained, paths, "reference", tmp_path / "sh", shard_size=3, workers=0,
                             keep_shards=True)
    assert (first.shards_embedded, first.shards_reused) == (3, 0)
    assert sorted(p.name for p in (tmp_path / "sh.shards").iterdir()) == ["00000.h5", "00001.h5", "00002.h5"]
    assert first.ids == one.ids == [p.stem for p in paths if p != bad]
    assert first.skipped == one.skipped == [str(bad)]
    np.testing.assert_allclose(first.vectors, one.vectors, atol=1e-5)

    again = embed_folder(trained, paths, "reference", tmp_path / "sh", shard_size=3, workers=0,
                             keep_shards=True)
    assert (again.shards_embedded, again.shards_reused) == (0, 3)
    assert again.ids == first.ids and again.skipped == first.skipped
    np.testing.assert_array_equal(again.vectors, first.vectors)

    (tmp_path / "sh.shards" / "00002.h5").unlink()  # as if interrupted before the last shard
    stat = os.stat(paths[0])
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # shard 0's files changed
    third = embed_folder(trained, paths, "reference", tmp_path / "sh", shard_size=3, workers=0)
    assert (third.shards_embedded, third.shards_reused) == (2, 1)
    np.testing.assert_allclose(third.vectors, one.vectors, atol=1e-5)
    assert read_isc_h5(tmp_path / "sh.h5")[0] == one.ids
    assert not (tmp_path / "sh.shards").exists()


def test_shards_of_another_model_or_side_are_not_reused(trained, tiny_run, make_images, tmp_path):
    paths = make_images(tmp_path / "imgs", 4)
    embed_folder(trained, paths, "reference", tmp_path / "x", shard_size=2, workers=0, keep_shards=True)
    as_query = embed_folder(trained, paths, "query", tmp_path / "x", shard_size=2, workers=0)
    assert as_query.shards_embedded == 2


def test_refusals(trained, other_tiny_run, make_images, tmp_path):
    a = make_images(tmp_path / "a", 2)
    b = make_images(tmp_path / "b", 1, seed=5)
    with pytest.raises(ValueError, match="image id 'img000' names two files"):
        image_ids([*a, *b])
    with pytest.raises(ValueError, match="image id 'img000' names two files"):
        embed_folder(trained, [*a, *b], "query", tmp_path / "dup", workers=0)
    with pytest.raises(ValueError, match="side must be one of"):
        embed_folder(trained, a, "keys", tmp_path / "x", workers=0)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 1 images could be read"):
        embed_folder(trained, [junk], "query", tmp_path / "junk", workers=0)

    embed_folder(trained, a, "query", tmp_path / "q", workers=0)
    dim = trained.cfg.model.descriptor_dim
    with pytest.raises(ValueError, match="holds query descriptors .Q model. but reference descriptors"):
        read_descriptors(tmp_path / "q.h5", trained.fingerprint, "reference", dim)
    other = load_trained(other_tiny_run)
    with pytest.raises(ValueError, match=f"embedded with model {trained.fingerprint}, not {other.fingerprint}"):
        read_descriptors(tmp_path / "q.h5", other.fingerprint, "query", dim)
    with pytest.raises(ValueError, match="holds 256-d descriptors but the model makes 128-d"):
        read_descriptors(tmp_path / "q.h5", trained.fingerprint, "query", 128)
    assert json.loads((tmp_path / "q.meta.json").read_text())["n"] == 2
