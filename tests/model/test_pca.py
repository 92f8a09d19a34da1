import numpy as np
import pytest
import torch

from qkcopy.model.pca import PCA, PCAProjection


def _low_rank(n: int, d: int, rank: int, seed: int = 0) -> np.ndarray:
    """Rows on a random affine subspace of dimension `rank`, with decreasing spread. (n, d) float32."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, rank)))[0].T  # (rank, d) orthonormal
    coeffs = rng.normal(size=(n, rank)) * np.linspace(5.0, 0.5, rank)
    return (coeffs @ basis + rng.normal(size=d)).astype(np.float32)


def test_fit_orthonormal_ordered_and_exact_on_low_rank_data():
    x = _low_rank(600, 960, 200)
    pca = PCA.fit(x, dim=256)
    assert pca.mean.shape == (960,) and pca.components.shape == (256, 960)
    assert pca.mean.dtype == pca.components.dtype == np.float32
    gram = pca.components.astype(np.float64) @ pca.components.T.astype(np.float64)
    np.testing.assert_allclose(gram, np.eye(256), atol=1e-5)
    assert np.all(np.diff(pca.explained_variance) <= 1e-6)
    assert np.all(pca.explained_variance[200:] < 1e-6 * pca.explained_variance[0])
    z = pca.transform(x)
    assert z.shape == (600, 256) and z.dtype == np.float32
    np.testing.assert_allclose(pca.inverse_transform(z), x, atol=1e-4)


def test_matches_numpy_svd_reference():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(500, 40)) * np.linspace(3, 0.1, 40)).astype(np.float32)
    pca = PCA.fit(x, dim=10)
    mean = x.astype(np.float64).mean(axis=0)
    _, sing, vt = np.linalg.svd(x - mean, full_matrices=False)
    # same subspace and variances; each component equals the SVD's up to sign
    np.testing.assert_allclose(pca.explained_variance, sing[:10] ** 2 / (500 - 1), rtol=1e-5)
    signs = np.sign(np.sum(pca.components * vt[:10], axis=1))
    np.testing.assert_allclose(pca.components, vt[:10] * signs[:, None], atol=1e-5)
    want = (x - mean) @ (vt[:10] * signs[:, None]).T
    np.testing.assert_allclose(pca.transform(x), want, rtol=1e-5, atol=1e-5)
    # sign convention: the largest-magnitude entry of each component is positive
    assert np.all(pca.components[np.arange(10), np.abs(pca.components).argmax(axis=1)] > 0)


def test_save_load_round_trip_and_fingerprint(tmp_path):
    pca = PCA.fit(_low_rank(300, 64, 30, seed=2), dim=16)
    path = pca.save(tmp_path / "sub" / "pca.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["pca.safetensors"]  # no temp file left behind
    loaded = PCA.load(path)
    for name in ("mean", "components", "explained_variance"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(pca, name))
    assert loaded.fingerprint() == pca.fingerprint() and len(pca.fingerprint()) == 12
    other = PCA.fit(_low_rank(300, 64, 30, seed=3), dim=16)
    assert other.fingerprint() != pca.fingerprint()
    with pytest.raises(FileNotFoundError, match="nope"):
        PCA.load(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk"):
        PCA.load(tmp_path / "junk.safetensors")


def test_module_matches_transform_and_is_frozen():
    x = _low_rank(400, 960, 300, seed=4)
    pca = PCA.fit(x, dim=256)
    module = pca.as_module()
    assert isinstance(module, PCAProjection) and list(module.parameters()) == []
    assert set(module.state_dict()) == {"mean", "components"}
    with torch.no_grad():
        out = module(torch.from_numpy(x[:32]))
    assert out.shape == (32, 256) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), pca.transform(x[:32]), rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = module(torch.from_numpy(x[:4]))
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, out[:4], rtol=0, atol=1e-5)


def test_bad_input_raises():
    x = _low_rank(100, 32, 10)
    with pytest.raises(ValueError, match="at least dim=64 rows"):
        PCA.fit(np.zeros((50, 96), np.float32), dim=64)
    with pytest.raises(ValueError, match="dim must be in 1..32"):
        PCA.fit(x, dim=33)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        PCA.fit(x[0])
    with pytest.raises(ValueError, match="floating-point"):
        PCA.fit(x.astype(np.int64))
    bad = x.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        PCA.fit(bad, dim=8)
    pca = PCA.fit(x, dim=8)
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        pca.transform(x[:, :31])
    with pytest.raises(ValueError, match=r"\(B, 32\)"):
        pca.as_module()(torch.zeros(2, 31))
