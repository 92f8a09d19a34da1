"""Fixtures of the service tests: a collection of drawn pictures described by the tiny run, its keys, and copies
of it on either vector store."""

import shutil
from pathlib import Path

import pytest
from served import edited_copy
from testkit import draw_images

from qkcopy.collection import Collection
from qkcopy.collection.describe import Describer, add_files
from qkcopy.model.trained import load_trained
from qkcopy.serve.auth import create_key


@pytest.fixture(scope="session")
def trained(tiny_run):
    return load_trained(tiny_run, "cpu")


@pytest.fixture(scope="session")
def pictures(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pictures")
    refs = draw_images(root / "refs", 12, seed=20, prefix="ref")
    others = draw_images(root / "others", 3, seed=21, prefix="other")
    copies = [edited_copy(p, root / f"copy{i}.jpg") for i, p in enumerate(refs[:3])]
    return dict(root=root, refs=refs, others=others, copies=copies)


def _threshold(describer, pictures) -> float:
    """Half-way (in score) between the worst edited copy and the best unrelated picture."""
    import numpy as np

    from qkcopy.data.images import load_image

    def vec(side, paths):
        return describer.describe(side, [describer.prepare(load_image(p)) for p in paths])

    refs = vec("reference", pictures["refs"])
    d_copy = ((vec("query", pictures["copies"]) - refs[:3]) ** 2).sum(1).max()
    d_other = ((vec("query", pictures["others"])[:, None] - refs[None]) ** 2).sum(2).min()
    assert d_copy < d_other, "the tiny model must tell these copies from the other pictures"
    return -float(np.sqrt(d_copy * d_other))


@pytest.fixture(scope="session")
def collection_template(tmp_path_factory, trained, tiny_run, pictures) -> tuple[Path, dict]:
    """A collection folder (12 references, threshold pinned) and keys; copy it before changing it."""
    root = tmp_path_factory.mktemp("coll") / "c"
    describer = Describer(trained)
    with Collection.create(root, trained.fingerprint, describer.dim, tiny_run,
                           _threshold(describer, pictures)) as coll:
        added, _, skips = add_files(coll, describer, pictures["refs"], "default", {"source": "test"})
        assert added == 12 and skips.count == 0
        keys = {scopes: create_key(coll.store, scopes, scopes.split("+")) for scopes in ("read", "write", "read+write")}
        coll.snapshot()
    return root, keys


@pytest.fixture
def collection_dir(collection_template, tmp_path, request) -> Path:
    """A copy of the template; `parametrize("collection_dir", ["milvus-lite"], indirect=True)` moves its
    vectors to that store (same rows, ids and keys)."""
    shutil.copytree(collection_template[0], tmp_path / "c")
    store = getattr(request, "param", "faiss")
    if store != "faiss":
        with Collection.open(tmp_path / "c") as coll:
            assert coll.move_vectors(store) == 12
    return tmp_path / "c"


@pytest.fixture
def keys(collection_template) -> dict:
    return collection_template[1]
