"""`qkcopy families`: µAP and recall@1 per edit family for one or more methods' predictions on a benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("families", help="scores per edit family (held-out or AugLy) for predictions.csv files",
                       description=__doc__)
    p.add_argument("--benchmark", type=Path, required=True, help="a benchmark built by `qkcopy make-benchmark`")
    p.add_argument("predictions", nargs="+", type=Path, metavar="RUN",
                   help="predictions.csv files, or folders holding one (`qkcopy baseline` / `qkcopy eval` outputs)")
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    p.add_argument("--group", action="append", default=[], metavar="NAME=FAM,FAM",
                   help="also a row for the queries of any of these families (e.g. the ones held out of training); "
                        "repeatable; NAME=all: every query")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkcopy.data.benchmark import load_benchmark
    from qkcopy.evaluation.per_family import family_report
    from qkcopy.io import atomic_write

    table = family_report(load_benchmark(args.benchmark), args.predictions, args.group)
    print(table)
    if args.out is not None:
        atomic_write(args.out, table + "\n")
    return 0
