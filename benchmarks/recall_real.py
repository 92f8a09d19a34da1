"""(issue 22; docs/RESULTS.md "Vector stores") recall@10 of the approximate indexes against exact search on real
descriptors: `qkcopy embed` outputs of a trained model (references: K side; queries: Q side).

    python benchmarks/recall_real.py REFS_PREFIX QUERIES_PREFIX

Builds each index with the one builder `qkcopy index` and the collection use (`new_faiss_index`, its defaults),
searches k = 10 at several nprobe, and prints recall@10 (the share of the exact 10 nearest found) and ms per query.
IVF-PQ is also measured as the collection searches it: a shortlist of k·R by code distance re-ordered by exact
distance (`rerank_exact`; the collection reads the shortlist's vectors from its database, here from memory).
"""

import sys
import time

import faiss
import numpy as np

from qkcopy.retrieval.descriptors import read_npy
from qkcopy.retrieval.faiss_index import RERANK, new_faiss_index, rerank_exact

faiss.omp_set_num_threads(1)
_, refs = read_npy(sys.argv[1])
_, queries = read_npy(sys.argv[2])
k = 10
exact, _ = new_faiss_index("flat", refs.shape[1], None)
exact.add(refs)
_, truth = exact.search(queries, k)  # (Q, k)
print(f"{len(refs)} references, {len(queries)} queries, {refs.shape[1]}-d; exact = faiss Flat (squared L2)")
print("| index | parameters | nprobe | recall@10 | ms / query |\n|---|---|---:|---:|---:|")
for kind in ("ivf", "ivfpq"):
    index, params = new_faiss_index(kind, refs.shape[1], refs)
    index.add(refs)
    for nprobe in sorted({1, 4, params["nprobe"], 64} - {0}):
        if nprobe > params["nlist"]:
            continue
        faiss.extract_index_ivf(index).nprobe = nprobe
        start = time.perf_counter()
        _, found = index.search(queries, k)
        ms = (time.perf_counter() - start) * 1000 / len(queries)
        recall = np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)])
        shown = {key: v for key, v in params.items() if key != "nprobe"}
        print(f"| {kind} | {shown} | {nprobe}{' (default)' if nprobe == params['nprobe'] else ''} | "
              f"{recall:.3f} | {ms:.2f} |")
        if kind != "ivfpq":
            continue
        for r in sorted({4, RERANK, 20}):
            start = time.perf_counter()
            _, short = index.search(queries, k * r)
            _, found = rerank_exact(queries, short, lambda ids: (ids, refs[ids]), k)
            ms = (time.perf_counter() - start) * 1000 / len(queries)
            recall = np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)])
            print(f"| {kind} + exact re-rank of k·{r} | {shown} | {nprobe} | {recall:.3f} | {ms:.2f} |")
