"""`qkcopy search`: which indexed references are the given images copies of? Rows (query, reference, score,
is_copy), score = −squared L2, is_copy from the threshold calibrated by `qkcopy eval`."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkcopy.cli import add_embedding_options, add_region_options, region_defaults, count


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search images among an index's references: copy or not a copy",
                       description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="run directory (the one that built the index)")
    p.add_argument("--index", type=Path, required=True, help="index directory from `qkcopy index`")
    p.add_argument("--images", type=Path, help="folder of query images (searched recursively)")
    p.add_argument("files", nargs="*", type=Path, help="query image files (or folders)")
    p.add_argument("--k", type=count(1), default=10, help="references returned per image [10]")
    p.add_argument("--threshold", help="threshold.json from `qkcopy eval` (or its folder), or a score value; "
                                       "pairs scoring at or above it are copies [none: rank only]")
    p.add_argument("--nprobe", type=count(1), help="IVF cells searched [the index's default]")
    p.add_argument("--out", type=Path, required=True, help="results file, .csv or .json")
    add_region_options(p, "each match carries the winning box",
                       "verify each image's K best matches by local features (SIFT + RANSAC) and re-score them; "
                       "needs --references [0]")
    p.add_argument("--region-table", type=Path, metavar="PREFIX.regions.h5",
                   help="search the images of this table from `qkcopy embed --side query --regions N` as they were "
                        "described (its regions and region size; nothing is described again); --images only to "
                        "--verify them")
    p.add_argument("--references", type=Path, help="folder of the indexed reference images (for --verify)")
    p.add_argument("--verify-bonus", type=float, default=1.0, help="score added at confidence 1 [1.0]")
    add_embedding_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkcopy.evaluation.threshold import load_threshold
    from qkcopy.retrieval.search import check_results_path, find_copies, write_matches
    from qkcopy.data.images import scan_images
    from qkcopy.retrieval.index import ReferenceIndex
    from qkcopy.model.trained import load_trained

    check_results_path(args.out)  # before anything is embedded
    # a value or file that cannot label pairs is refused now (find_copies checks its model)
    threshold = load_threshold(args.threshold) if args.threshold else None
    if args.images is None and not args.files and args.region_table is None:
        raise ValueError("give query images: --images DIR, image files or --region-table PREFIX.regions.h5")
    paths = scan_images(args.images) if args.images is not None else []  # a missing folder: "does not exist"
    for p in args.files:
        if not p.exists():
            raise FileNotFoundError(f"query image {p} not found")
        paths += scan_images(p) if p.is_dir() else [p]
    verify, refs = None, None
    if args.verify:
        from qkcopy.data.verify import VerifyConfig

        if args.references is None:
            raise ValueError("--verify needs --references DIR, the folder of the indexed reference images")
        verify = VerifyConfig(k=args.verify, max_side=args.verify_side, bonus=args.verify_bonus)
        refs = {p.stem: p for p in scan_images(args.references)}
    trained = load_trained(args.model, args.device)
    table = table_options(args, trained.fingerprint) if args.region_table is not None else None
    region_defaults(args, trained)
    index = ReferenceIndex.load(args.index)
    result = find_copies(trained, index, paths, k=args.k, threshold=threshold, nprobe=args.nprobe,
                         batch_size=args.batch, workers=args.workers, regions=args.regions,
                         region_margin=args.region_margin, verify=verify, reference_paths=refs,
                         region_size=args.region_size, table=table)
    write_matches(result, args.out)
    print(result.summary())
    print(f"results: {args.out}")
    return 0


def table_options(args: argparse.Namespace, fingerprint: str):
    """Read --region-table (refused when made by another model) and take its regions and region size; a flag
    that says otherwise is refused, since the rows were described that way."""
    from qkcopy.retrieval.region_table import read_region_table

    table, attrs = read_region_table(args.region_table, fingerprint)
    for flag, name in (("--regions", "regions"), ("--region-size", "region_size")):
        given = getattr(args, name)
        if given is not None and given != attrs[name]:
            raise ValueError(f"{args.region_table} holds rows made with {flag} {attrs[name]}, not {given}: drop "
                             f"{flag} or embed the images again with it")
        setattr(args, name, int(attrs[name]))
    return table
