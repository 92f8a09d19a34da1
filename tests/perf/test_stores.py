"""`qkcopy bench-stores`: its exact reference search, and one tiny run (the figures are in RESULTS, not here)."""

import json

import numpy as np

from qkcopy.cli import main
from qkcopy.perf.stores import exact_top, synthetic


def test_exact_top_is_the_brute_force_neighbours():
    v = synthetic(300, seed=0)
    q = v[:7] + 0.01
    d = ((q[:, None, :].astype(np.float64) - v[None]) ** 2).sum(-1)  # (7, 300)
    assert (exact_top(v, q, k=5) == np.argsort(d, axis=1, kind="stable")[:, :5] + 1).all()
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)


def test_a_tiny_run_finds_the_exact_neighbours(tmp_path):
    assert main(["bench-stores", "--sizes", "300", "--stores", "faiss", "--queries", "5", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert row["n"] == 300 and row["store"] == "faiss" and row["recall_at_10"] == 1.0 and row["ingest_per_s"] > 0
    assert main(["bench-stores", "--stores", "milvus", "--out", str(tmp_path)]) == 2


def test_a_tiny_ivfpq_run_reranks_to_the_exact_neighbours(tmp_path):
    """`--index ivfpq`: the import builds IVF-PQ once; lookups re-rank its shortlist with the exact vectors."""
    assert main(["bench-stores", "--sizes", "2000", "--stores", "faiss", "--index", "ivfpq", "--nlist", "8",
                 "--queries", "20", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert row["index"] == "ivfpq" and row["source_in_top10"] == 1.0 and row["recall_at_10"] >= 0.9, row
