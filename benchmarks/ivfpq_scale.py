"""(issue 22; docs/RESULTS.md "Vector stores") The faiss IVF-PQ index at N synthetic references, streamed.

    OMP_NUM_THREADS=2 python benchmarks/ivfpq_scale.py N OUT_DIR [NLIST]

Descriptors are drawn like the collection benchmark's (`qkcopy.perf.stores.synthetic`: unit vectors around
1,000 Gaussian centres, σ 0.3), chunk by chunk from a per-chunk seed, never held all at once: the index (built by the
one builder, `new_faiss_index("ivfpq")`, m = 32 codes of 8 bits) is trained on the first 100,000, filled chunk by
chunk, written, read back (start-up), searched one query at a time (p50 / p99 ms, one thread), and its top 10
compared with exact search over the same chunks made again (recall@10 of 200 queries: references + noise).
"""

import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from qkcopy.retrieval.faiss_index import new_faiss_index

CHUNK, K, NQ = 500_000, 10, 200


CENTRES = np.random.default_rng(0).normal(size=(1000, 256)).astype(np.float32)


def chunk(i: int, n: int) -> np.ndarray:
    """Rows i·CHUNK … of the N references: (≤ CHUNK, 256) float32 unit vectors, the same on every call."""
    rng = np.random.default_rng(1000 + i)
    m = min(CHUNK, n - i * CHUNK)
    v = CENTRES[rng.integers(0, 1000, m)] + rng.normal(scale=0.3, size=(m, 256)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def rss_mib() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def main() -> None:
    n, out = int(sys.argv[1]), Path(sys.argv[2])
    nlist = int(sys.argv[3]) if len(sys.argv) > 3 else 4096
    out.mkdir(parents=True, exist_ok=True)
    chunks = (n + CHUNK - 1) // CHUNK
    res: dict = dict(n=n, nlist=nlist)
    t = time.perf_counter()
    index, params = new_faiss_index("ivfpq", 256, chunk(0, n)[:100_000], nlist=nlist)
    res["train_s"] = round(time.perf_counter() - t, 1)
    rng = np.random.default_rng(7)
    picks = np.sort(rng.choice(n, NQ, replace=False))
    queries = np.empty((NQ, 256), np.float32)
    t = time.perf_counter()
    for i in range(chunks):
        x = chunk(i, n)
        inside = (picks >= i * CHUNK) & (picks < i * CHUNK + len(x))
        queries[inside] = x[picks[inside] - i * CHUNK]
        index.add_with_ids(x, np.arange(i * CHUNK, i * CHUNK + len(x), dtype=np.int64))
        print(f"added {min(n, (i + 1) * CHUNK):,} ({time.perf_counter() - t:.0f} s)", flush=True)
    res["add_s"] = round(time.perf_counter() - t, 1)
    res["ingest_per_s"] = round(n / (res["add_s"] + res["train_s"]))
    queries += rng.normal(scale=0.02, size=queries.shape).astype(np.float32)
    faiss.write_index(index, str(out / "index.faiss"))
    res["file_mib"] = round((out / "index.faiss").stat().st_size / 2 ** 20)
    del index
    t = time.perf_counter()
    index = faiss.read_index(str(out / "index.faiss"))
    res["startup_s"] = round(time.perf_counter() - t, 2)
    res["rss_mib"] = round(rss_mib())
    exact_d = np.full((NQ, K), np.inf, np.float32)
    exact_i = np.zeros((NQ, K), np.int64)
    for i in range(chunks):  # exact top 10 over the same chunks, made again
        x = chunk(i, n)
        d = (queries ** 2).sum(1)[:, None] - 2 * queries @ x.T + (x ** 2).sum(1)[None]
        part = np.argpartition(d, K, axis=1)[:, :K]
        cand_d = np.concatenate([exact_d, np.take_along_axis(d, part, 1)], 1)
        cand_i = np.concatenate([exact_i, part + i * CHUNK], 1)
        keep = np.argsort(cand_d, 1)[:, :K]
        exact_d, exact_i = np.take_along_axis(cand_d, keep, 1), np.take_along_axis(cand_i, keep, 1)
    faiss.omp_set_num_threads(1)
    for nprobe in (16, 64):
        faiss.extract_index_ivf(index).nprobe = nprobe
        ms, found = [], []
        for q in queries:
            s = time.perf_counter()
            _, ids = index.search(q[None], K)
            ms.append((time.perf_counter() - s) * 1000)
            found.append(ids[0])
        recall = float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact_i)]))
        source = float(np.mean([p in f for p, f in zip(picks, found)]))  # the copied reference among the 10
        res[f"nprobe{nprobe}"] = dict(p50_ms=round(float(np.percentile(ms, 50)), 2),
                                      p99_ms=round(float(np.percentile(ms, 99)), 2), recall_at_10=round(recall, 3),
                                      source_in_top10=round(source, 3))
    (out / "index.faiss").unlink()
    (out / "results.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
