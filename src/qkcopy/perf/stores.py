"""faiss vs Milvus, side by side: the collection's two vector stores on the same synthetic references.

For each store and size N, in fresh processes (so resident memory is the store's own):
1. ingest: `qkcopy collection import` of an N-row `embed`-format file (SQLite rows + the store's index, built
   once at the end) → references/s;
2. start-up: `Collection.open` + the index loaded (faiss: snapshot read; Milvus: collection loaded) → s;
3. lookups: Nq single-descriptor `Collection.search(k=10)` calls (index + the SQLite metadata of the hits),
   in process → p50/p99 ms, and the process's resident memory after them (VmRSS);
4. recall@10 of those lookups against exact search (numpy, float64) over the same vectors, and how often the
   reference a query was made from is among its 10.

The faiss store's index is flat unless `index` names another (`--index ivfpq` for 10M: the import builds it
once, trained on a sample, streaming the rows; lookups re-rank IVF-PQ's shortlist with the exact vectors).
The reference file is written through a memory map: 10M rows never sit in memory.

Descriptors are unit vectors drawn around 1,000 Gaussian centres (σ 0.3 per unit of norm) so neighbours are
not all equidistant; queries are references plus noise. Letters: N references, Nq queries, E dim (256).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import numpy as np

E = 256
K = 10
FINGERPRINT = "bench-stores"


def synthetic(n: int, seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """(n, E) float32 unit vectors around 1,000 centres, written into `out` (e.g. a memory-mapped .npy) if given."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, E)).astype(np.float32)
    out = np.empty((n, E), np.float32) if out is None else out
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        v = centres[rng.integers(0, 1000, m)] + rng.normal(scale=0.3, size=(m, E)).astype(np.float32)
        out[s:s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _ingest(root: str, store: str, descriptors: str, index: dict | None) -> dict:
    from qkcopy.collection import Collection
    from qkcopy.collection.ingest import import_descriptors

    t = time.perf_counter()
    with Collection.create(root, FINGERPRINT, E, vectors=store) as coll:
        done = import_descriptors(coll, [descriptors], index=index)
    seconds = time.perf_counter() - t
    return dict(ingest_s=round(seconds, 1), ingest_per_s=round(done.added / seconds))


def _lookups(root: str, queries: np.ndarray) -> dict:
    from qkcopy.collection import Collection

    t = time.perf_counter()
    coll = Collection.open(root)
    coll.index()
    startup = time.perf_counter() - t
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        rows = coll.search(q[None], k=K)[0]
        times.append(time.perf_counter() - t)
        found.append([m.id for m in rows])
    coll.close()
    ms = np.array(times) * 1e3
    return dict(startup_s=round(startup, 2), p50_ms=round(float(np.percentile(ms, 50)), 2),
                p99_ms=round(float(np.percentile(ms, 99)), 2), rss_mib=round(_rss_mib()), found=found)


def _in_child(fn, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """(Nq, k) 1-based row ids (= collection ids of an import into an empty collection) of the exact k-NN."""
    best = np.full((len(queries), 0), 0, np.int64)
    best_d = np.zeros((len(queries), 0))
    q64 = queries.astype(np.float64)  # (Nq, E)
    for s in range(0, len(vectors), 200_000):
        v = vectors[s:s + 200_000].astype(np.float64)  # (chunk, E)
        d = (q64 ** 2).sum(1)[:, None] - 2 * q64 @ v.T + (v ** 2).sum(1)[None]  # (Nq, chunk) squared L2
        ids = np.arange(s, s + d.shape[1])[None].repeat(len(queries), 0)
        d, ids = np.concatenate([best_d, d], 1), np.concatenate([best, ids], 1)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        best_d, best = np.take_along_axis(d, order, 1), np.take_along_axis(ids, order, 1)
    return best + 1


def write_references(prefix: Path, n: int) -> np.ndarray:
    """An `embed`-format reference file of n synthetic rows (PREFIX.npy, _ids.txt, .meta.json), written through a
    memory map so that 10M rows (10 GB) never sit in memory; returns the (read-only) memory-mapped rows."""
    from qkcopy.io import atomic_write_json

    vectors = np.lib.format.open_memmap(f"{prefix}.npy", mode="w+", dtype=np.float32, shape=(n, E))
    synthetic(n, seed=0, out=vectors)
    vectors.flush()
    with open(f"{prefix}_ids.txt", "w", encoding="utf-8") as f:
        for s in range(0, n, 1_000_000):
            f.write("".join(f"r{i}\n" for i in range(s, min(n, s + 1_000_000))))
    atomic_write_json(Path(f"{prefix}.meta.json"), dict(fingerprint=FINGERPRINT, side="reference", dim=E, n=n))
    del vectors
    return np.load(f"{prefix}.npy", mmap_mode="r")


def bench_stores(out: Path, sizes: list[int], stores: list[str], n_queries: int = 500,
                 index: dict | None = None) -> list[dict]:
    """Run the comparison; writes and returns results (one dict per size and store) in out/results.json.
    `index`: the faiss store's index ({"kind": "ivfpq", "nlist": …}; default flat), built once by the import."""
    from qkcopy.io import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    results = []
    for n in sizes:
        prefix = out / f"refs{n}"
        vectors = write_references(prefix, n)
        rng = np.random.default_rng(1)
        sources = rng.integers(0, n, n_queries)
        queries = vectors[sources] + rng.normal(scale=0.05, size=(n_queries, E)).astype(np.float32)
        truth = exact_top(vectors, queries)
        del vectors
        for store in stores:
            root = out / f"{store.replace('://', '-').replace(':', '-')}-{n}"
            faiss_index = index if store == "faiss" else None
            row = dict(n=n, store=store, index=(faiss_index or {}).get("kind", "flat" if store == "faiss" else "FLAT"),
                       **_in_child(_ingest, str(root), store, f"{prefix}.npy", faiss_index))
            looked = _in_child(_lookups, str(root), queries)
            found = looked.pop("found")
            row.update(looked, recall_at_10=round(float(np.mean([len(set(f) & set(t)) / K
                                                                 for f, t in zip(found, truth.tolist())])), 4),
                       source_in_top10=round(float(np.mean([s + 1 in f for s, f in zip(sources.tolist(), found)])), 4))
            print(json.dumps(row), flush=True)
            results.append(row)
        atomic_write_json(out / "results.json", results)
    return results
