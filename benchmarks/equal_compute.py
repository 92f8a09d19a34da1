"""(issue 21; docs/RESULTS.md "Equal compute") µAP against wall-clock seconds and pairs seen, one curve per run.

    python benchmarks/equal_compute.py OUT.png LABEL=RUN_DIR ...

For each run: its evaluations (evaluations.jsonl, the training command's own, on its --benchmark), the
seconds from the run's start (config.yaml written) to each segment's checkpoint (checkpoints/<segment>, written
after that segment's evaluation) and the pairs seen by then (train_log.jsonl: steps × batch). Prints a
Markdown table and draws both curves.

    python benchmarks/equal_compute.py --report data/report OUT.png LABEL=RUN_DIR ...

also evaluates every segment's checkpoint on the report benchmark (`qkcopy eval --model RUN/checkpoints/SEG
--benchmark data/report --regions 0 --out RUN/eval-report-SEG`, skipped when that summary exists; the last
segment's is RUN/eval-report when present) and adds its µAP to the table and a second row of curves.
"""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve(run: Path) -> list[dict]:
    start = (run / "config.yaml").stat().st_mtime
    batch = {}
    for line in (run / "train_log.jsonl").read_text().splitlines():
        row = json.loads(line)
        batch[row["segment"]] = batch.get(row["segment"], 0) + 1
    import yaml

    size = yaml.safe_load((run / "config.yaml").read_text())["data"]["batch_size"]
    rows, seen = [], 0
    for line in (run / "evaluations.jsonl").read_text().splitlines():
        ev = json.loads(line)
        seg = ev["segment"]
        tag = run / "checkpoints" / seg
        seconds = tag.stat().st_mtime - start if tag.is_dir() else 0.0
        seen += batch.get(seg, 0) * size
        rows.append(dict(segment=seg, seconds=seconds, pairs=seen, micro_ap=ev["micro_ap"],
                         r_p90=ev["recall_at_p90"]))
    return rows


def report_scores(run: Path, rows: list[dict], bench: Path) -> None:
    """Each row's checkpoint evaluated on the report benchmark (whole image), added as row["report"]."""
    for i, r in enumerate(rows):
        out = run / f"eval-report-{r['segment']}"
        last = run / "eval-report" / "summary.json"
        if i == len(rows) - 1 and last.is_file() and not (out / "summary.json").is_file():
            out = last.parent  # the run's final checkpoint, already evaluated there
        if not (out / "summary.json").is_file():
            subprocess.run(["qkcopy", "eval", "--model", str(run / "checkpoints" / r["segment"]), "--benchmark",
                            str(bench), "--regions", "0", "--out", str(out)], check=True, capture_output=True)
        raw = json.loads((out / "summary.json").read_text())["raw"]
        r["report"], r["report_r_p90"] = raw["micro_ap"], raw["recall_at_p90"]


def main() -> None:
    args = sys.argv[1:]
    bench = Path(args.pop(args.index("--report") + 1)) if "--report" in args else None
    if bench is not None:
        args.remove("--report")
    out, runs = Path(args[0]), [a.split("=", 1) for a in args[1:]]
    fig, axes = plt.subplots(2 if bench else 1, 2, figsize=(10, 8 if bench else 4), squeeze=False)
    extra = " report µAP | report R@P90 |" if bench else ""
    print(f"| run | segment | wall s since start | pairs seen | dev µAP | dev R@P90 |{extra}\n"
          f"|---|---|---:|---:|---:|---:|{'---:|---:|' if bench else ''}")
    for label, path in runs:
        rows = curve(Path(path))
        if bench:
            report_scores(Path(path), rows, bench)
        for r in rows:
            tail = f" {r['report']:.3f} | {r['report_r_p90']:.3f} |" if bench else ""
            print(f"| {label} | {r['segment']} | {r['seconds']:.0f} | {r['pairs']:,} | {r['micro_ap']:.3f} | "
                  f"{r['r_p90']:.3f} |{tail}")
        for row, (key, name) in enumerate([("micro_ap", "dev")] + ([("report", "report")] if bench else [])):
            axes[row][0].plot([r["seconds"] for r in rows], [r[key] for r in rows], "o-", label=label)
            axes[row][1].plot([max(r["pairs"], 1) for r in rows], [r[key] for r in rows], "o-", label=label)
            axes[row][0].set(xlabel="wall-clock seconds on 2 CPU cores (from the run's start)", ylabel=f"µAP ({name})")
            axes[row][1].set(xlabel="pairs seen (log)", xscale="log", ylabel=f"µAP ({name})")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"\nplot: {out}")


if __name__ == "__main__":
    main()
