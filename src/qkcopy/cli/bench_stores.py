"""`qkcopy bench-stores`: the collection's vector stores side by side (faiss vs Milvus) at N synthetic
references: ingest rate (`collection import`), start-up, resident memory, in-process lookup p50/p99 and
recall@10 against exact search. Each store runs in fresh processes; run it on an otherwise idle machine."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-stores", help="faiss vs Milvus vector stores (benchmark)", description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="reference counts [100000]")
    p.add_argument("--stores", nargs="+", default=["faiss", "milvus-lite"],
                   help="faiss, milvus-lite, milvus://HOST:PORT [faiss milvus-lite]")
    p.add_argument("--queries", type=int, default=500, help="single-descriptor lookups per store [500]")
    p.add_argument("--index", choices=("flat", "ivf", "ivfpq"), default="flat",
                   help="the faiss store's index, built once by the import [flat]")
    p.add_argument("--nlist", type=int, help="IVF cells [about 4·sqrt(N), capped by the training sample]")
    p.add_argument("--out", type=Path, required=True, help="work folder; results.json is written there")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkcopy.collection.vector_store import check_store
    from qkcopy.perf.stores import bench_stores

    for s in args.stores:
        check_store(s)
    if min(args.sizes) < 10 or args.queries < 1:
        raise ValueError("--sizes must be >= 10 and --queries >= 1")
    index = None if args.index == "flat" and args.nlist is None else dict(kind=args.index, nlist=args.nlist)
    bench_stores(args.out, args.sizes, args.stores, args.queries, index)
    return 0
