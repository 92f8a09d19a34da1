"""Scores per edit family: µAP and recall@1 of one method's predictions on the queries of each family.

A query's families come from the benchmark's manifest.json: one family for a query made with a held-out
edit (`make-benchmark --heldout`), the families of its recipe's AugLy ops otherwise (a query with three edits
counts in three families). For family f the ISC2021 metrics are computed on the queries of f alone — copies
and distractors — so a family's µAP says how well copies made that way are found and told from non-copies
made that way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from qkcopy.data.benchmark import MANIFEST, Benchmark
from qkcopy.data.families import BENCHMARK_FAMILIES, FAMILIES, family_of_op
from qkcopy.data.isc_csv import GroundTruth, Predictions
from qkcopy.evaluation.metrics import Metrics, isc_metrics


def query_families(benchmark: Benchmark) -> dict[str, list[str]]:
    """query id → its edit families, from the manifest of a benchmark qkcopy built."""
    path = Path(benchmark.root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: per-family scores need a benchmark built by "
                                "`qkcopy make-benchmark` (its manifest lists each query's edits)")
    out = {}
    listed = json.loads(path.read_text()).get("queries")
    if not isinstance(listed, list):
        raise ValueError(f"{path} lists no queries' edits (not a `qkcopy make-benchmark` manifest); per-family "
                         "scores need one")
    for q in listed:
        if "families" in q:
            out[q["id"]] = list(q["families"])
        elif "edits" in q:  # a benchmark built before families were recorded: derive them from the recipe
            out[q["id"]] = sorted({family_of_op(e["op"]) for e in q["edits"]})
        else:
            raise ValueError(f"{path}: query {q.get('id')} lists neither families nor edits; rebuild the benchmark")
    return out


def per_family_metrics(preds: Predictions, gt: GroundTruth, families: Mapping[str, Sequence[str]],
                       groups: Mapping[str, Sequence[str]] | None = None) -> dict[str, Metrics]:
    """{family: Metrics on that family's queries}, for every family with at least one true copy; and for each
    of `groups` ({name: families}), Metrics on the queries of any of its families."""
    out: dict[str, Metrics] = {}
    wanted = {f: (f,) for f in sorted({f for fs in families.values() for f in fs})} | dict(groups or {})
    for family, members in wanted.items():
        chosen = {q for q, fs in families.items() if set(members) & set(fs) and q in gt.matches}
        sub = GroundTruth({q: r for q, r in gt.matches.items() if q in chosen})
        if sub.n_positives == 0:
            continue
        keep = [i for i, q in enumerate(preds.query_ids) if q in chosen]
        out[family] = isc_metrics(Predictions(preds.query_ids[keep], preds.reference_ids[keep], preds.scores[keep]),
                               sub)
    return out


def family_table(results: Mapping[str, Mapping[str, Metrics]], counts: Mapping[str, int]) -> str:
    """A markdown table: one row per family, µAP and recall@1 of each method (column)."""
    methods = list(results)
    families = list(dict.fromkeys(f for r in results.values() for f in r))  # families, then groups
    head = "| family | copies | " + " | ".join(f"{m} µAP | {m} recall@1" for m in methods) + " |"
    rule = "|---|---:|" + "---:|---:|" * len(methods)
    rows = []
    for f in families:
        cells = []
        for m in methods:
            got = results[m].get(f)
            cells += ["—", "—"] if got is None else [f"{got.micro_ap:.3f}", f"{got.recall_at_1:.3f}"]
        rows.append(f"| {f} | {counts.get(f, 0)} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])


def parse_groups(specs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`NAME=FAM,FAM` specs (NAME=all: every family, the benchmark-only ones included) → {name: families}; a bad
    spec is a ValueError naming it."""
    known = FAMILIES + tuple(BENCHMARK_FAMILIES)
    groups = {}
    for spec in specs:
        name, _, members = spec.partition("=")
        chosen = known if members == "all" else tuple(m for m in members.split(",") if m)
        unknown = sorted(set(chosen) - set(known))
        if not name or not chosen or unknown:
            raise ValueError(f"--group {spec!r}: expected NAME=FAMILY,FAMILY… with families among {list(known)}")
        groups[name] = chosen
    return groups


def copies_per_family(benchmark: Benchmark, families: Mapping[str, Sequence[str]],
                      groups: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """{family or group: how many of its queries are copies}."""
    matches = benchmark.ground_truth.matches
    counts: dict[str, int] = {}
    for q, fs in families.items():
        if matches.get(q) is not None:
            for f in fs:
                counts[f] = counts.get(f, 0) + 1
    for name, members in groups.items():
        counts[name] = sum(1 for q, fs in families.items() if set(members) & set(fs) and matches.get(q) is not None)
    return counts


def family_report(benchmark: Benchmark, runs: Sequence[Path], group_specs: Sequence[str] = ()) -> str:
    """The markdown table of `qkcopy families`: µAP and recall@1 per family (and group) for each run.

    Args:
        benchmark: built by `qkcopy make-benchmark` (its manifest names each query's families).
        runs: predictions.csv files, or folders holding one (a column each, named by the folder).
        group_specs: `NAME=FAM,FAM` rows over the queries of any of those families.
    Raises:
        FileNotFoundError: a run without predictions.csv, or a benchmark without a manifest.
        ValueError: a bad group spec.
    """
    families, groups = query_families(benchmark), parse_groups(group_specs)
    results: dict[str, dict[str, Metrics]] = {}
    for path in runs:
        path = Path(path)
        csv = path / "predictions.csv" if path.is_dir() else path
        if not csv.is_file():
            raise FileNotFoundError(f"{csv} not found: give a predictions.csv or a folder holding one")
        folder = path if path.is_dir() else path.parent
        label = folder.name if folder.name not in results else f"{folder.parent.name}/{folder.name}"
        results[label] = per_family_metrics(Predictions.from_csv(csv), benchmark.ground_truth, families, groups)
    return family_table(results, copies_per_family(benchmark, families, groups))
