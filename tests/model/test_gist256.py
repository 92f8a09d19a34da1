"""gist256: GIST, L2-normalised, PCA to 256 — the module equals the formula, the fit uses training images only."""

import numpy as np
import pytest
import torch
from testkit import draw_images

from qkcopy.data.images import SkipLog, load_image
from qkcopy.data.transforms import gist_input
from qkcopy.model.gist import compute_gist
from qkcopy.model.gist256 import Gist256, fit_gist256, gist_descriptors, unit_gist
from qkcopy.model.pca import PCA


def test_unit_gist_normalises_rows():
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    torch.testing.assert_close(unit_gist(x), torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


def test_module_equals_pca_of_unit_gist(tmp_path):
    paths = draw_images(tmp_path, 6, seed=2, size=48)
    vecs, kept = gist_descriptors(paths, SkipLog())
    assert vecs.shape == (6, 960) and kept.tolist() == list(range(6))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vecs, unit_gist(torch.from_numpy(compute_gist(paths, progress=False))).numpy(),
                               rtol=1e-6, atol=1e-7)
    pca = PCA.fit(np.random.default_rng(0).normal(size=(40, 960)), dim=4)
    module = Gist256(pca)
    pixels = torch.stack([gist_input(load_image(p)) for p in paths])
    np.testing.assert_allclose(module(pixels).numpy(), pca.transform(vecs), rtol=1e-4, atol=1e-5)
    assert module.fingerprint == pca.fingerprint()


def test_fit_uses_a_seeded_subset_and_needs_enough_images(tmp_path):
    paths = draw_images(tmp_path, 12, seed=3, size=40)
    (tmp_path / "bad.jpg").write_bytes(b"broken")
    skips = SkipLog()
    a = fit_gist256(paths + [tmp_path / "bad.jpg"], n_images=13, seed=0, dim=4, skips=skips)
    assert skips.count == 1 and a.out_dim == 4
    b = fit_gist256(paths, n_images=8, seed=1, dim=4)
    c = fit_gist256(paths, n_images=8, seed=1, dim=4)
    assert b.fingerprint() == c.fingerprint() != a.fingerprint()
    whole = PCA.fit(gist_descriptors(paths, SkipLog())[0], dim=4)
    np.testing.assert_allclose(np.abs(a.components), np.abs(whole.components), atol=1e-4)  # all 12 readable ones
    with pytest.raises(ValueError, match="at least 256 training images"):
        fit_gist256(paths, n_images=100, seed=0)
