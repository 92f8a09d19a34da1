"""`qkcopy embed`: descriptors of a folder of images (Q model for queries, K for references), resumable.

Under `torchrun --nproc-per-node W -m qkcopy embed …` the shards are split over the W processes and merged
in id order by rank 0: the same files as one process. `--regions N` (query side) also writes PREFIX.regions.h5,
the whole image and N proposed regions of each image with their boxes (`qkcopy.retrieval.region_table`; rank 0
describes them, after the merge)."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkcopy.cli import add_embedding_options, count


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="descriptors of a folder of images (ISC2021 h5 + npy), in resumable shards",
                       description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="run directory (or a checkpoint inside one)")
    p.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    p.add_argument("--side", choices=("query", "reference"), required=True,
                   help="query: Q model; reference: K model (index references with K, search with Q)")
    p.add_argument("--out", type=Path, required=True, help="output prefix: writes PREFIX.h5, PREFIX.npy, "
                                                           "PREFIX_ids.txt, PREFIX.meta.json")
    add_embedding_options(p)
    p.add_argument("--shard-size", type=int, default=10_000, help="images per resumable shard [10000]")
    p.add_argument("--keep-shards", action="store_true", help="keep PREFIX.shards/ after merging")
    p.add_argument("--regions", type=count(0), default=0,
                   help="query side: also write PREFIX.regions.h5, each image's whole-image row and N proposed "
                        "regions (boxes + Q descriptors), for copies inside bigger pictures [0: no table]")
    p.add_argument("--region-size", type=count(32),
                   help="input side the regions are described at [the run's model.region_size, else its input side]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkcopy.data.images import scan_images
    from qkcopy.distributed import init
    from qkcopy.model.trained import load_trained
    from qkcopy.retrieval.embed_ranks import embed_folder_ranks

    if args.regions and args.side != "query":
        raise ValueError("--regions describes query images (references stay one K descriptor each): use --side query")
    dist = init(args.device)  # under torchrun: one rank per process, shards dealt out (retrieval.embed_ranks)
    trained = load_trained(args.model, dist.device if dist.world > 1 else args.device)
    paths = scan_images(args.images)
    result = embed_folder_ranks(trained, paths, args.side, args.out, dist,
                                    batch_size=args.batch, workers=args.workers, shard_size=args.shard_size,
                                    keep_shards=args.keep_shards)
    table = None
    if result is not None and args.regions:
        from qkcopy.retrieval.region_table import write_region_table

        size = trained.query_regions(size=args.region_size)[2] or trained.input_size
        emb = trained.describe_regions(paths, args.regions, args.batch, args.workers, region_size=size)
        table = write_region_table(result.prefix, emb, trained.fingerprint, args.regions, trained.input_size, size)
    dist.close()
    if result is None:  # not rank 0: rank 0 reports
        return 0
    print(f"{len(result.ids)} {args.side} descriptors ({result.vectors.shape[1]}-d, model {trained.fingerprint}) "
          f"→ {result.prefix}.h5, {result.prefix}.npy; {len(result.skipped)} unreadable images skipped; "
          f"{result.shards_embedded} shards embedded, {result.shards_reused} reused"
          + (f"; regions → {table}" if table else ""))
    return 0
