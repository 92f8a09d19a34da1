"""(issue 21; docs/RESULTS.md "Equal compute") µAP against wall-clock seconds and pairs seen, one curve per run.

    python benchmarks/equal_compute.py OUT.png LABEL=RUN_DIR ...

For each run: its evaluations (evaluations.jsonl, the training command's own, on its --benchmark), the
seconds from the run's start (config.yaml written) to each segment's checkpoint (checkpoints/<segment>, written
after that segment's evaluation) and the pairs seen by then (train_log.jsonl: steps × batch). Prints a
Markdown table and draws both curves.
"""

import json
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


def main() -> None:
    out, runs = Path(sys.argv[1]), [a.split("=", 1) for a in sys.argv[2:]]
    fig, (ax_t, ax_n) = plt.subplots(1, 2, figsize=(10, 4))
    print("| run | segment | wall s since start | pairs seen | µAP | R@P90 |\n|---|---|---:|---:|---:|---:|")
    for label, path in runs:
        rows = curve(Path(path))
        for r in rows:
            print(f"| {label} | {r['segment']} | {r['seconds']:.0f} | {r['pairs']:,} | {r['micro_ap']:.3f} | "
                  f"{r['r_p90']:.3f} |")
        ax_t.plot([r["seconds"] for r in rows], [r["micro_ap"] for r in rows], "o-", label=label)
        ax_n.plot([max(r["pairs"], 1) for r in rows], [r["micro_ap"] for r in rows], "o-", label=label)
    ax_t.set(xlabel="wall-clock seconds on 2 CPU cores (from the run's start)", ylabel="µAP (dev)")
    ax_n.set(xlabel="pairs seen (log)", xscale="log", ylabel="µAP (dev)")
    ax_t.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"\nplot: {out}")


if __name__ == "__main__":
    main()
