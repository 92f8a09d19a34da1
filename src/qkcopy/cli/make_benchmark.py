"""`qkcopy make-benchmark`: synthesise a DISC21-like benchmark (references, queries, train, ground truth).

`--dev` builds the development benchmark: the options of qkcopy.synth.DEV_BENCHMARK from the shared photo
pools (`<repo>/../shared/data/photos/eval` as images, `.../train` as training images). Sizes and seed can
still be overridden, which makes it a different benchmark. `--report --avoid-references data/dev` builds the
report benchmark (REPORT_BENCHMARK: other references, other edit code). See docs/BENCHMARK.md.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from qkcopy.data.augment import STRENGTHS
from qkcopy.data.families import BENCHMARK_FAMILIES, FAMILIES
from qkcopy.data.benchmark import reference_sources
from qkcopy.data.synth import (DEV_BENCHMARK, DEV_IMAGES, DEV_TRAIN_IMAGES, REPORT_BENCHMARK, BenchmarkOptions,
                               make_benchmark)

# option name -> BenchmarkOptions field
_FIELDS = {"references": "n_references", "queries": "n_queries", "matched_fraction": "matched_fraction",
           "train": "n_train", "seed": "seed", "strength": "strength"}


def _run(args: argparse.Namespace) -> int:
    if args.dev and args.report:
        raise ValueError("--dev and --report are two benchmarks: give one")
    if args.report and not args.avoid_references:
        raise ValueError("--report draws its references from photos the development benchmark does not use: give "
                         "--avoid-references data/dev (make it first with `qkcopy make-benchmark --dev`)")
    base = DEV_BENCHMARK if args.dev else REPORT_BENCHMARK if args.report else BenchmarkOptions()
    overrides = {field: getattr(args, name) for name, field in _FIELDS.items() if getattr(args, name) is not None}
    if args.heldout or args.report:
        overrides["heldout"] = tuple(f for part in (args.heldout or "all,paste").split(",")
                                     for f in (FAMILIES if part == "all" else (part,)))
    if args.avoid_references:
        overrides["avoid"] = reference_sources(Path(args.avoid_references))
    options = replace(base, **overrides)
    shared = args.dev or args.report
    images = Path(args.images) if args.images else (DEV_IMAGES if shared else None)
    train = Path(args.train_images) if args.train_images else (DEV_TRAIN_IMAGES if shared else None)
    if images is None:
        raise ValueError("give --images DIR (or --dev for the development benchmark)")
    bench = make_benchmark(images, Path(args.out), train, options, overwrite=args.overwrite)
    print(bench.summary())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("make-benchmark", help="build a DISC21-like benchmark from folders of photos",
                              description=__doc__.splitlines()[0])
    p.add_argument("--images", help="photos for references and query sources (searched recursively)")
    p.add_argument("--train-images", help="photos for training images (default: the rest of --images)")
    p.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    p.add_argument("--dev", action="store_true",
                   help=f"the development benchmark: {DEV_IMAGES} and {DEV_TRAIN_IMAGES}, DEV_BENCHMARK sizes")
    d = BenchmarkOptions()
    p.add_argument("--references", type=int, help=f"number of references (default {d.n_references})")
    p.add_argument("--queries", type=int, help=f"number of queries (default {d.n_queries})")
    p.add_argument("--matched-fraction", type=float,
                   help=f"fraction of queries that copy a reference (default {d.matched_fraction})")
    p.add_argument("--train", type=int, help="number of training images (default: every remaining photo)")
    p.add_argument("--seed", type=int, help=f"random seed (default {d.seed}; --dev: {DEV_BENCHMARK.seed})")
    p.add_argument("--strength", choices=STRENGTHS, help=f"query edit strength (default {d.strength})")
    p.add_argument("--heldout", metavar="FAMILIES",
                   help=f"queries made only with these edit families' own edits (comma list, or all: "
                        f"{','.join(FAMILIES)}; by name only: {','.join(BENCHMARK_FAMILIES)}); train with "
                        "data.holdout_families=[…] to keep them unseen")
    p.add_argument("--report", action="store_true",
                   help=f"the report benchmark (presets are chosen on --dev, reported here): {DEV_IMAGES}, "
                        "references among the photos --avoid-references does not use as references, queries by "
                        "the held-out edit code of every family and paste, REPORT_BENCHMARK sizes and seed")
    p.add_argument("--avoid-references", metavar="BENCHMARK",
                   help="a benchmark made by make-benchmark (e.g. data/dev) whose reference photos must not be "
                        "references here (they may still be distractor sources or backgrounds)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing benchmark in --out")
    p.set_defaults(func=_run)
