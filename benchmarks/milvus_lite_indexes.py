"""(issue 22; docs/RESULTS.md "Milvus-lite's index types") Which Milvus index types milvus-lite runs, and what a
lookup costs on each: N synthetic unit vectors (E = 256), inserted in batches of 5,000, flushed, loaded, then
50 single-vector searches (k = 10) of references + a small offset.

    python benchmarks/milvus_lite_indexes.py WORKDIR [N [INDEX_TYPE …]]

Prints, per index type: insert s, load s (milvus-lite builds some indexes on load), search p50 ms, whether
the reference a query was made from is its top 1 — or the engine's refusal.
"""

import sys
import time
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient

work = Path(sys.argv[1])
work.mkdir(parents=True, exist_ok=False)  # a fresh milvus-lite file each run
n, e = (int(sys.argv[2]) if len(sys.argv) > 2 else 100_000), 256
client = MilvusClient(str(work / "bench.db"))
x = np.random.default_rng(0).normal(size=(n, e)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
for kind in sys.argv[3:] or ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW"):
    name = "t_" + kind.lower()
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=e)
    params = client.prepare_index_params()
    build = dict(nlist=int(4 * n ** 0.5)) if kind.startswith("IVF") else dict(M=16, efConstruction=64) if kind == "HNSW" else {}
    if kind == "IVF_PQ":
        build["m"] = 32
    search = dict(params=dict(nprobe=16)) if kind.startswith("IVF") else dict(params=dict(ef=64)) if kind == "HNSW" else {}
    try:
        params.add_index(field_name="vector", index_type=kind, metric_type="L2", params=build)
        client.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")
        t = time.perf_counter()
        for s in range(0, n, 5000):
            client.insert(name, [dict(id=j, vector=x[j]) for j in range(s, min(n, s + 5000))])
        client.flush(name)
        inserted = time.perf_counter() - t
        client.release_collection(name)
        t = time.perf_counter()
        client.load_collection(name)
        loaded = time.perf_counter() - t
        times, top1 = [], []
        for i in range(50):
            t = time.perf_counter()
            hit = client.search(name, data=[x[i] + 0.01], limit=10, search_params=search)
            times.append(time.perf_counter() - t)
            top1.append(hit[0][0]["id"] == i)
        print(f"| {kind} | {build} | {inserted:.1f} | {loaded:.1f} | {1000 * np.median(times):.1f} | "
              f"{np.mean(top1):.2f} |", flush=True)
    except Exception as err:  # the engine's own refusal, printed as the finding
        print(f"| {kind} | {build} | refused: {str(err)[:160]} | | | |", flush=True)
    if client.has_collection(name):
        client.drop_collection(name)
