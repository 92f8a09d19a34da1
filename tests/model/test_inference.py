"""embed_paths: descriptors in input order, equal to the model run by hand, bad files skipped and named."""

import numpy as np
import torch
from testkit import draw_images

from qkcopy.data.images import load_image
from qkcopy.data.transforms import image_pair
from qkcopy.model.inference import embed_paths
from qkcopy.model.trained import load_trained


def test_batches_and_workers_do_not_change_the_descriptors(tiny_run, tmp_path, one_thread):
    trained = load_trained(tiny_run)
    paths = draw_images(tmp_path, 5, seed=3)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    paths.insert(2, tmp_path / "broken.jpg")
    size = trained.cfg.model.image_size
    a = embed_paths(trained.q, trained.gist256, paths, size, batch_size=2, workers=0)
    b = embed_paths(trained.q, trained.gist256, paths, size, batch_size=64, workers=1)
    assert a.ids == b.ids == [p.stem for p in paths if p.name != "broken.jpg"]
    assert a.skipped == [str(tmp_path / "broken.jpg")]
    np.testing.assert_allclose(a.vectors, b.vectors, rtol=1e-5, atol=1e-6)
    pixels, gist_pixels = image_pair(load_image(paths[3]), size)  # the 3rd readable image, by hand
    with torch.no_grad():
        want = trained.q(pixels[None], trained.gist256(gist_pixels[None]))[0].numpy()
    np.testing.assert_allclose(a.vectors[2], want, rtol=1e-5, atol=1e-6)
    assert a.vectors.dtype == np.float32 and a.vectors.shape == (5, trained.cfg.model.descriptor_dim)


def test_nothing_readable_gives_an_empty_result(tiny_run, tmp_path):
    trained = load_trained(tiny_run)
    (tmp_path / "x.jpg").write_bytes(b"")
    emb = embed_paths(trained.k, trained.gist256, [tmp_path / "x.jpg"], trained.cfg.model.image_size, workers=0)
    assert emb.ids == [] and emb.skipped == [str(tmp_path / "x.jpg")] and emb.vectors.shape[0] == 0


class _Recording(torch.nn.Module):
    """A real descriptor model that also records the batch of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, pixels, g256):
        self.calls.append(len(pixels))
        return self.model(pixels, g256)


def test_describe_batch_runs_cache_sized_chunks_with_the_same_rows(tiny_run, one_thread):
    from qkcopy.model.inference import CPU_PIXELS_PER_THREAD, describe_batch

    trained = load_trained(tiny_run)
    size = 160  # 3 images a call on one thread
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(13, 3, size, size, generator=gen)  # (13, 3, S, S)
    with torch.no_grad():
        g256 = trained.gist256(torch.rand(13, 3, 32, 32, generator=gen) * 255)  # (13, G)
        whole = trained.q(pixels, g256).numpy()  # one call, the reference
        recording = _Recording(trained.q)
        got = describe_batch(recording, pixels, g256).numpy()
    step = max(1, CPU_PIXELS_PER_THREAD // (size * size))
    assert recording.calls == [min(step, 13 - i) for i in range(0, 13, step)] and len(recording.calls) > 1
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32 and got.shape == whole.shape
