"""The one faiss index builder: a factory string per index type, trained on the references, used by
`qkcopy index` (`retrieval.index`) and the collection's cache (`collection.cache`).

Types: "flat" ("Flat": exact squared L2), "ivf" ("IVF{nlist},Flat": inverted lists, `nlist` cells, `nprobe`
searched), "ivfpq" ("IVF{nlist},PQ{m}x8np": inverted lists with product-quantised codes, approximate distances,
much less memory). IVF types are trained (k-means, seed 0) on the descriptors they are built from.

Letters: N references, E descriptor dim.
"""

from __future__ import annotations

import math

import numpy as np

INDEX_TYPES = ("flat", "ivf", "ivfpq")
PQ_BITS = 8  # bits per sub-quantiser code: 2^8 centroids each, so training needs >= 256 vectors
MIN_POINTS_PER_CELL = 39  # faiss's own k-means warning threshold


def default_nlist(n: int) -> int:
    """About 4·√N cells, but at least MIN_POINTS_PER_CELL training points per cell."""
    return max(1, min(int(4 * math.sqrt(n)), n // MIN_POINTS_PER_CELL))


def new_faiss_index(kind: str, dim: int, train: np.ndarray | None, nlist: int | None = None, m: int | None = None,
                    nprobe: int | None = None, seed: int = 0, max_train: int | None = None,
                    with_ids: bool = False) -> tuple[object, dict]:
    """The one faiss index builder (`qkcopy index` and the collection's cache), from a factory string.

    Args:
        kind: "flat" ("Flat"), "ivf" ("IVF{nlist},Flat") or "ivfpq" ("IVF{nlist},PQ{m}x8np").
        dim: descriptor dim E.
        train: (N, E) float32 descriptors the IVF types are trained on (unused for flat).
        nlist: IVF cells (default `default_nlist(N)`); must be in 1..N. m: PQ sub-quantisers, dividing E.
        nprobe: cells probed per query (default min(nlist, 16)). seed: k-means seed.
        max_train: train IVF on a random sample of at most this many rows (seed `seed`).
        with_ids: wrap a flat index in IDMap2 so that it holds caller-given int64 ids (IVF holds them natively).
    Returns:
        The trained, empty index and its parameters ({} for flat; nlist, nprobe, m).
    Raises:
        ValueError: an unknown kind, or sizes the kind cannot be trained with.
    """
    import faiss  # here, so that the command line reads INDEX_TYPES without loading faiss

    check_index_params(kind, dim, nlist, nprobe, m)
    if kind == "flat":
        index = faiss.index_factory(dim, "Flat")
        return (faiss.IndexIDMap2(index) if with_ids else index), {}
    n = 0 if train is None else len(train)
    if n == 0:
        raise ValueError(f"an {kind} index is trained on the reference descriptors and needs at least "
                         f"{MIN_POINTS_PER_CELL} of them, got 0; use the flat type")
    nlist = nlist or default_nlist(n)
    if not 1 <= nlist <= n:
        raise ValueError(f"nlist must be in 1..{n} (the number of references), got {nlist}")
    params: dict = dict(nlist=nlist, nprobe=nprobe or max(1, min(nlist, 16)))
    factory = f"IVF{nlist},Flat"
    if kind == "ivfpq":
        m = m or next(c for c in (32, 16, 8, 4, 2, 1) if dim % c == 0)
        if n < 2 ** PQ_BITS:
            raise ValueError(f"IVF-PQ needs at least {2 ** PQ_BITS} references (it trains {2 ** PQ_BITS} codes per "
                             f"sub-quantiser), got {n}; use the flat or ivf type")
        # "np": no polysemous training (a code permutation for Hamming pre-filtering, which no search here uses;
        # it took ~50 s of the ~50.5 s training of IVF8,PQ32x8 on 2,000 rows; the distances are the same)
        factory, params["m"] = f"IVF{nlist},PQ{m}x{PQ_BITS}np", m
    index = faiss.index_factory(dim, factory)
    faiss.extract_index_ivf(index).cp.seed = seed
    if max_train is not None and n > max_train:
        train = train[np.random.default_rng(seed).choice(n, max_train, replace=False)]
    index.train(np.ascontiguousarray(train))
    return index, params


RERANK = 10  # an IVF-PQ lookup of k shortlists k·RERANK by code distance, then orders them by exact distance


def check_index_params(kind: str, dim: int, nlist: int | None = None, nprobe: int | None = None,
                       m: int | None = None, rerank: int | None = None) -> None:
    """What can be checked of an index request before any work (an import of 10M rows builds it at the end).

    Raises:
        ValueError: an unknown type, nlist or nprobe below 1, m not dividing `dim`, rerank outside 0..100.
    """
    if kind not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, got {kind!r}")
    for name, value in (("nlist", nlist), ("nprobe", nprobe), ("m", m)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if m is not None and dim % m:
        raise ValueError(f"IVF-PQ needs m dividing the descriptor dim {dim}, got m={m}")
    if rerank is not None and not 0 <= rerank <= 100:
        raise ValueError(f"rerank must be in 0..100 (0: no exact re-ranking), got {rerank}")


def rerank_exact(queries: np.ndarray, candidates: np.ndarray, vectors_of, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-order an approximate shortlist by exact squared L2 and keep the best k (what IVF-PQ's codes lose).

    Args:
        queries: (Nq, E) float32. candidates: (Nq, S) int64 ids from the approximate index, −1 pads.
        vectors_of: ids (n,) int64 → (found ids (m,) int64, their vectors (m, E) float32); ids it cannot find
            (removed meanwhile) are dropped from the shortlist.
        k: neighbours kept.
    Returns:
        sqdist (Nq, k) float32 ascending (inf pads), ids (Nq, k) int64 (−1 pads).
    """
    wanted = np.unique(candidates[candidates >= 0])
    found, vectors = vectors_of(wanted)
    row = {int(i): r for r, i in enumerate(np.asarray(found).tolist())}
    out_d = np.full((len(queries), k), np.inf, np.float32)
    out_i = np.full((len(queries), k), -1, np.int64)
    for q, (query, cands) in enumerate(zip(queries, candidates)):
        keep = [c for c in dict.fromkeys(cands.tolist()) if c in row]  # order-preserving, no duplicates
        if not keep:
            continue
        diff = vectors[[row[c] for c in keep]].astype(np.float64) - query.astype(np.float64)  # (S', E)
        d = np.einsum("se,se->s", diff, diff)
        best = np.argsort(d, kind="stable")[:k]
        out_d[q, :len(best)], out_i[q, :len(best)] = d[best], np.asarray(keep, np.int64)[best]
    return out_d, out_i
