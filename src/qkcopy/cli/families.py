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
    from qkcopy.data.isc_csv import Predictions
    from qkcopy.io import atomic_write
    from qkcopy.evaluation.per_family import family_table, per_family_metrics, query_families

    from qkcopy.data.families import FAMILIES

    bench = load_benchmark(args.benchmark)
    families = query_families(bench)
    groups = {}
    for spec in args.group:
        name, _, members = spec.partition("=")
        chosen = FAMILIES if members == "all" else tuple(m for m in members.split(",") if m)
        unknown = sorted(set(chosen) - set(FAMILIES))
        if not name or not chosen or unknown:
            raise ValueError(f"--group {spec!r}: expected NAME=FAMILY,FAMILY… with families among {list(FAMILIES)}")
        groups[name] = chosen
    results = {}
    for path in args.predictions:
        csv = path / "predictions.csv" if path.is_dir() else path
        if not csv.is_file():
            raise FileNotFoundError(f"{csv} not found: give a predictions.csv or a folder holding one")
        folder = path if path.is_dir() else path.parent
        label = folder.name if folder.name not in results else f"{folder.parent.name}/{folder.name}"
        results[label] = per_family_metrics(Predictions.from_csv(csv), bench.ground_truth, families, groups)
    counts = {}
    for q, fs in families.items():
        if bench.ground_truth.matches.get(q) is not None:
            for f in fs:
                counts[f] = counts.get(f, 0) + 1
    for name, members in groups.items():
        counts[name] = sum(1 for q, fs in families.items()
                           if set(members) & set(fs) and bench.ground_truth.matches.get(q) is not None)
    table = family_table(results, counts)
    print(table)
    if args.out is not None:
        atomic_write(args.out, table + "\n")
    return 0
