"""`qkcopy collection import`: an `embed` output reaches the same search results as `add` of the same images,
on both vector stores; a rerun is a no-op; another model's or the query side's descriptors are refused;
`collection move` to the other store keeps every answer."""

import numpy as np
import pytest

from qkcopy.cli import main
from qkcopy.collection import Collection
from qkcopy.retrieval.descriptors import read_isc_h5

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = ["--device", "cpu"]


@pytest.mark.parametrize("store", ["faiss", "milvus-lite"])
def test_import_of_embed_output_equals_add_of_the_images(tiny_run, other_tiny_run, tiny_benchmark, tmp_path,
                                                         capsys, store):
    refs = tiny_benchmark / "references"
    added, imported = tmp_path / "added", tmp_path / "imported"
    assert main(["collection", "create", str(added), "--model", str(tiny_run), "--add", str(refs), *CPU]) == 0
    assert main(["collection", "create", str(imported), "--model", str(tiny_run), "--store", store, *CPU]) == 0
    assert main(["embed", "--model", str(tiny_run), "--images", str(refs), "--side", "reference",
                 "--out", str(tmp_path / "emb" / "refs"), "--shard-size", "5", *CPU]) == 0
    capsys.readouterr()
    assert main(["collection", "import", str(imported), str(tmp_path / "emb" / "refs.h5"), "--meta", "src=embed"]) == 0
    assert "imported 12 references into bank 'default' from 1 files (0 already present)" in capsys.readouterr().out
    assert main(["collection", "import", str(imported), str(tmp_path / "emb" / "refs.npy")]) == 0  # resumed: no-op
    assert "imported 0 references into bank 'default' from 1 files (12 already present)" in capsys.readouterr().out

    _, vectors = read_isc_h5(tmp_path / "emb" / "refs.h5")
    queries = vectors + np.random.default_rng(0).normal(scale=0.05, size=vectors.shape).astype(np.float32)
    with Collection.open(added) as a, Collection.open(imported) as b:
        assert b.stats()["store"] == store and b.check()["consistent"]
        want, got = a.search(queries, k=5), b.search(queries, k=5)
        for row_a, row_b in zip(want, got):
            assert [m.name.rsplit(".", 1)[0] for m in row_a] == [m.name for m in row_b]
            np.testing.assert_allclose([m.score for m in row_b], [m.score for m in row_a], rtol=1e-4, atol=1e-6)
        assert got[0][0].metadata == {"src": "embed"}

    other = tmp_path / "other"
    assert main(["embed", "--model", str(other_tiny_run), "--images", str(refs), "--side", "reference",
                 "--out", str(other), *CPU]) == 0
    assert main(["embed", "--model", str(tiny_run), "--images", str(refs), "--side", "query",
                 "--out", str(tmp_path / "q"), *CPU]) == 0
    capsys.readouterr()
    assert main(["collection", "import", str(imported), str(tmp_path / "emb" / "refs.h5"), f"{other}.h5"]) == 2
    assert "embedded with model" in capsys.readouterr().err
    assert main(["collection", "import", str(imported), str(tmp_path / "q.h5")]) == 2
    assert "holds query descriptors" in capsys.readouterr().err
    with Collection.open(imported) as b:
        assert b.stats()["references"] == 12  # the refused imports wrote nothing

    moved = "faiss" if store != "faiss" else "milvus-lite"  # `collection move`: the other store, same answers
    assert main(["collection", "move", str(imported), "--store", moved]) == 0
    assert f"12 references now searched in {moved}" in capsys.readouterr().out
    with Collection.open(imported) as b:
        assert b.stats()["store"] == moved and b.check()["consistent"]
        again = b.search(queries, k=5)
        assert [[m.id for m in r] for r in again] == [[m.id for m in r] for r in got]
        np.testing.assert_allclose([[m.score for m in r] for r in again], [[m.score for m in r] for r in got],
                                   rtol=1e-4, atol=1e-6)  # two engines' float32 distances
    assert main(["collection", "move", str(imported), "--store", "milvus://nohost"]) == 2
    assert "--store must be one of" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("store", ["faiss", "milvus-lite"])
def test_import_of_a_torchrun_embed_equals_add(tiny_run, tiny_benchmark, tmp_path, store):
    """`torchrun --nproc-per-node 2 -m qkcopy embed` (gloo, shards split over the ranks), then `collection
    import`: the same references and search answers as `collection create --add` of the same images."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    refs = tiny_benchmark / "references"
    added, imported = tmp_path / "added", tmp_path / "imported"
    assert main(["collection", "create", str(added), "--model", str(tiny_run), "--add", str(refs), *CPU]) == 0
    assert main(["collection", "create", str(imported), "--model", str(tiny_run), "--store", store, *CPU]) == 0
    torchrun = Path(sys.executable).parent / "torchrun"
    subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "qkcopy", "embed", "--model",
                    str(tiny_run), "--images", str(refs), "--side", "reference", "--batch", "2", "--workers", "1",
                    "--shard-size", "3", "--out", str(tmp_path / "emb" / "refs"), *CPU], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300, capture_output=True)
    assert main(["collection", "import", str(imported), str(tmp_path / "emb" / "refs.h5")]) == 0
    _, vectors = read_isc_h5(tmp_path / "emb" / "refs.h5")
    queries = vectors + np.random.default_rng(1).normal(scale=0.05, size=vectors.shape).astype(np.float32)
    with Collection.open(added) as a, Collection.open(imported) as b:
        assert a.stats()["references"] == b.stats()["references"] == 12
        for row_a, row_b in zip(a.search(queries, k=5), b.search(queries, k=5)):
            assert [m.name.rsplit(".", 1)[0] for m in row_a] == [m.name for m in row_b]
            np.testing.assert_allclose([m.score for m in row_b], [m.score for m in row_a], rtol=1e-4, atol=1e-6)


def test_import_builds_the_index_type_it_is_given_once(tmp_path, capsys):
    """`collection import --index ivfpq …`: the rows go in, the IVF-PQ index is built once at the end with
    the given parameters (and exact re-ranking); on milvus-lite, which has no IVF_PQ, the rows stay and the
    engine's refusal is one line."""
    from qkcopy.io import atomic_write_json
    from qkcopy.retrieval.descriptors import write_npy

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(600, 16)).astype(np.float32)
    prefix = write_npy(tmp_path / "refs", [f"r{i}" for i in range(600)], vectors)
    atomic_write_json(tmp_path / "refs.meta.json", dict(fingerprint="fp", side="reference", dim=16, n=600))
    for store in ("faiss", "milvus-lite"):
        Collection.create(tmp_path / store, "fp", 16, vectors=store).close()
    args = ["--index", "ivfpq", "--nlist", "4", "--m", "4", "--rerank", "5"]
    for bad, said in ((["--m", "7"], "m dividing the descriptor dim 16"), (["--rerank", "-1"], "rerank must be in"),
                      (["--nlist", "0"], "nlist must be >= 1")):  # refused before a row goes in, not after
        assert main(["collection", "import", str(tmp_path / "faiss"), f"{prefix}.npy", "--index", "ivfpq", *bad]) == 2
        assert said in capsys.readouterr().err
    with Collection.open(tmp_path / "faiss") as c:
        assert c.stats()["references"] == 0
    assert main(["collection", "import", str(tmp_path / "faiss"), f"{prefix}.npy", *args]) == 0
    with Collection.open(tmp_path / "faiss") as c:
        assert (c.kind, c.params["nlist"], c.params["m"], c.params["rerank"]) == ("ivfpq", 4, 4, 5)
        assert c.check()["consistent"] and c.stats()["references"] == 600
        row = c.search(vectors[3:4], k=3)[0]
        assert row[0].name == "r3" and row[0].score == pytest.approx(0.0, abs=1e-5)  # exact, not a code distance
    # milvus-lite has no IVF_PQ: the rows go in, the engine's refusal is one line, the index stays exact
    assert main(["collection", "import", str(tmp_path / "milvus-lite"), f"{prefix}.npy", *args]) == 2
    assert "cannot build a IVF_PQ index" in capsys.readouterr().err
    with Collection.open(tmp_path / "milvus-lite") as c:
        assert c.stats()["references"] == 600 and c.kind == "flat" and c.check()["consistent"]
        assert c.search(vectors[3:4], k=1)[0][0].name == "r3"
