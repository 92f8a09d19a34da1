"""`qkcopy index`: a faiss index over reference descriptors (K model), saved with ids and model fingerprint."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkcopy.retrieval.faiss_index import INDEX_TYPES  # faiss itself is loaded only when an index is built

from qkcopy.cli import add_embedding_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build or extend a searchable index of reference images",
                       description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="run directory (or a checkpoint inside one)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--references", type=Path, help="folder of reference images (embedded with K now)")
    src.add_argument("--descriptors", type=Path, help="reference descriptors from `qkcopy embed --side "
                                                      "reference` (.h5 or .npy): resumable for large folders")
    p.add_argument("--out", type=Path, required=True, help="index directory")
    p.add_argument("--type", choices=INDEX_TYPES, default="flat",
                   help="flat: exact L2 (default); ivf: inverted lists; ivfpq: inverted lists + PQ codes")
    p.add_argument("--nlist", type=int, help="IVF cells [about 4·sqrt(N), >= 39 references per cell]")
    p.add_argument("--m", type=int, help="IVF-PQ sub-quantisers, dividing the descriptor dim [32]")
    p.add_argument("--nprobe", type=int, help="IVF cells searched by default at search time [min(nlist, 16)]")
    p.add_argument("--add", action="store_true", help="append these references to the existing index in --out")
    p.add_argument("--allow-missing-meta", action="store_true",
                   help="accept --descriptors without their .meta.json (you vouch that --model's K side made them)")
    add_embedding_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkcopy.retrieval.index import index_folder
    from qkcopy.model.trained import load_trained

    trained = load_trained(args.model, args.device)
    index = index_folder(trained, args.out, references=args.references, descriptors=args.descriptors,
                             kind=args.type, nlist=args.nlist, m=args.m, nprobe=args.nprobe, add=args.add,
                             batch_size=args.batch, workers=args.workers,
                             allow_missing_meta=args.allow_missing_meta)
    print(f"{index.kind} index of {len(index)} references ({index.dim}-d, model {index.fingerprint}) in {args.out}")
    return 0
