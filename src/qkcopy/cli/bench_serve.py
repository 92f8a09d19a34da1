"""`qkcopy bench-serve`: latency, throughput, ingestion, memory and IVF recall of the matching service at
N references (synthetic descriptors for the index part, real JPEGs through the model). Talks to 127.0.0.1
only; every load loop is bounded. Run it on an otherwise idle machine, one torch/faiss thread."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkcopy.perf.serve_run import PARTS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-serve", help="figures of the matching service (benchmark)", description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="run directory (or a checkpoint inside one)")
    p.add_argument("--images", type=Path, nargs="+", required=True,
                   help="folders of real reference photos (e.g. data/dev/references data/dev/train)")
    p.add_argument("--queries", type=Path, help="real query photos for the IVF recall on real descriptors")
    p.add_argument("--threshold", type=float, help="copy threshold (score) for the IVF copy-top-1 agreement")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="reference counts")
    p.add_argument("--nlist", type=int, default=1024, help="IVF cells (the 1M-reference setting) [1024]")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--stores", nargs="+", default=["faiss"],
                   help="vector stores the store and service parts run on: faiss, milvus-lite, milvus://HOST:PORT "
                        "[faiss]")
    p.add_argument("--out", type=Path, required=True, help="work folder; results.json is written there")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkcopy.collection.vector_store import check_store
    from qkcopy.perf.serve_run import run_serve_bench

    for s in args.stores:
        check_store(s)
    run_serve_bench(args.model, args.images, args.out, args.queries, args.threshold, tuple(args.sizes), args.nlist,
                    tuple(args.parts), tuple(args.stores))
    print(f"results: {args.out / 'results.json'}")
    return 0
