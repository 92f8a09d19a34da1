from pathlib import Path

import pytest
import torch

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
