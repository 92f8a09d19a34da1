"""`qkcopy dedup`: groups of copies within folders of images (pairs at or above the calibrated threshold,
joined into groups), written as pairs.csv, groups.csv, groups.json and an HTML contact sheet per group;
with --ground-truth, precision and recall over pairs."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkcopy.cli import add_embedding_options, count


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dedup", help="find groups of copies within folders of images", description=__doc__)
    p.add_argument("folders", nargs="+", type=Path, help="image folders (searched recursively), pooled")
    p.add_argument("--model", type=Path, required=True, help="run directory")
    p.add_argument("--threshold", required=True,
                   help="threshold.json from `qkcopy eval` (or its folder), or a score value")
    p.add_argument("--k", type=int, default=10, help="neighbours looked at per image [10]")
    p.add_argument("--ground-truth", type=Path, help="CSV of copy pairs (id,id), e.g. a benchmark's ground_truth.csv")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--regions", type=count(0), default=0,
                   help="also describe N regions of each image (a copy inside a bigger picture); contact sheets "
                        "draw the region that matched [0]")
    p.add_argument("--region-margin", type=float, default=0.0,
                   help="added to a region's squared distance (not the whole image's) [0]")
    add_embedding_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkcopy.data.images import scan_images
    from qkcopy.model.trained import load_trained
    from qkcopy.evaluation.threshold import load_threshold, threshold_score
    from qkcopy.retrieval.dedup import (
        dedup_metrics,
        find_duplicates,
        read_ground_truth,
        write_report,
    )

    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    paths = [p for folder in args.folders for p in scan_images(folder)]
    trained = load_trained(args.model, args.device)
    threshold = load_threshold(args.threshold, trained.fingerprint)
    score = threshold_score(threshold)
    result = find_duplicates(trained, paths, threshold, args.k, args.batch, args.workers, args.regions,
                             args.region_margin)
    scores = dedup_metrics(result, read_ground_truth(args.ground_truth, result.ids)) if args.ground_truth else None
    write_report(result, args.out, scores)
    print(f"{len(result.ids)} images ({len(result.skipped)} unreadable): {len(result.pairs)} copy pairs in "
          f"{len(result.groups)} groups (threshold {score:.4g}) -> {args.out}/groups.json, sheets/index.html")
    if scores:
        for kind, s in scores.items():
            print(f"  {kind:6s} precision {s['precision']:.3f}  recall {s['recall']:.3f}  "
                  f"({s['correct']} of {s['predicted']} predicted pairs correct, {s['true']} true pairs)")
    return 0
