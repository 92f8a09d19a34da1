from pathlib import Path

import pytest
import torch
from testkit import draw_images

torch.set_num_threads(2)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PHOTOS = SHARED / "data" / "photos"
GIST_REFERENCE = SHARED / "data" / "gist_reference"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_photos() -> Path:
    if not PHOTOS.is_dir():
        pytest.skip("../shared/data/photos is absent (only on the development machines)")
    return PHOTOS


@pytest.fixture(scope="session")
def gist_reference() -> Path:
    if not GIST_REFERENCE.is_dir():
        pytest.skip("../shared/data/gist_reference is absent")
    return GIST_REFERENCE


# --- a tiny trained-run directory without training (helper F: index / search / eval / export tests) ---

def _make_tiny_run(run_dir: Path, seed: int) -> Path:
    """A run directory as `qkcopy train` leaves it: config.yaml, gist_pca.safetensors, checkpoints/latest.

    Random-init EfficientNet-Lite0 at 64 px with a small head. The "PCA" is fitted on Gaussian rows, so it is a
    random orthonormal projection of GIST 960 → 256 (distances roughly kept, and no GIST to compute): the
    descriptor is that projection plus a 1% residual, so it already finds lightly edited copies.
    """
    import numpy as np
    import yaml

    from qkcopy.checkpoint import save_checkpoint
    from qkcopy.config import TrainConfig, to_dict
    from qkcopy.model.descriptor import ModelConfig, build_qk_models
    from qkcopy.model.pca import PCA

    cfg = TrainConfig(seed=seed, device="cpu", amp=False,
                      model=ModelConfig(backbone="efficientnet_lite0", weights=None, image_size=64, hidden=64,
                                        feature_norm=True))
    g = torch.Generator().manual_seed(seed)
    rows = np.random.default_rng(seed).normal(size=(300, 960))
    run_dir.mkdir(parents=True)
    PCA.fit(rows).save(run_dir / "gist_pca.safetensors")
    q, k = build_qk_models(cfg.model, seed)
    with torch.no_grad():  # make Q and K differ from their shared init, as after training
        for p in k.head.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    save_checkpoint(run_dir / "checkpoints" / "latest", {"q": q, "k": k}, dict(phase=0, next_step=0))
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return _make_tiny_run(tmp_path_factory.mktemp("runs") / "tiny", seed=0)


@pytest.fixture(scope="session")
def other_tiny_run(tmp_path_factory) -> Path:
    """Another run (different weights and PCA): its descriptors must not mix with `tiny_run`'s."""
    return _make_tiny_run(tmp_path_factory.mktemp("runs") / "other", seed=1)


@pytest.fixture
def make_images():
    return draw_images


def _make_tiny_benchmark(root: Path) -> Path:
    """qkcopy-layout benchmark: 12 references, 6 lightly edited copies + 4 unrelated queries, 10 train images."""
    import json

    from PIL import Image, ImageEnhance

    refs = draw_images(root / "references", 12, seed=10, prefix="R000")
    draw_images(root / "train", 10, seed=11, prefix="T000")
    distractors = draw_images(root / ".distractors", 4, seed=12)
    (root / "queries").mkdir()
    rows = []
    for i in range(10):
        src = refs[i] if i < 6 else distractors[i - 6]
        img = Image.open(src).convert("RGB").resize((80, 80))
        img = ImageEnhance.Brightness(img).enhance(1.1)
        img.save(root / "queries" / f"Q0000{i}.jpg", quality=70)
        rows.append(f"Q0000{i},{refs[i].stem if i < 6 else ''}\n")
    (root / "ground_truth.csv").write_text("query_id,reference_id\n" + "".join(rows))
    (root / "manifest.json").write_text(json.dumps({"format": "qkcopy-benchmark/1", "note": "test fixture"}))
    return root


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    return _make_tiny_benchmark(tmp_path_factory.mktemp("bench") / "tiny")


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (small batches of tiny models gain nothing from more, and lose much
    when the cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def built_index(tiny_run, tiny_benchmark, tmp_path_factory):
    """`qkcopy index` of the tiny benchmark's references with the tiny run (for search and refusal tests)."""
    from testkit import FAST

    from qkcopy.cli import main

    out = tmp_path_factory.mktemp("idx") / "idx"
    assert main(["index", "--model", str(tiny_run), "--references", str(tiny_benchmark / "references"),
                 "--out", str(out)] + FAST) == 0
    return out
