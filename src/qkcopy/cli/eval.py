"""`qkcopy eval`: a trained model on a benchmark — µAP, R@P90, recall@1, PR curve, predictions, and the
calibrated copy threshold (threshold.json) that `qkcopy search` uses."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkcopy.cli import add_embedding_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a benchmark and calibrate its copy threshold",
                       description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="run directory (or a checkpoint inside one)")
    p.add_argument("--benchmark", type=Path, required=True, help="benchmark folder (qkcopy or DISC21 layout)")
    p.add_argument("--out", type=Path, help="output folder [RUN/eval/<benchmark name>]")
    p.add_argument("--k", type=int, default=10, help="references per query [10]")
    p.add_argument("--normalize", action="store_true",
                   help="also report ISC-style score normalisation against the benchmark's training images")
    p.add_argument("--beta", type=float, default=1.0, help="normalisation weight β [1.0]")
    p.add_argument("--n-background", type=int, default=10, help="normalise by the n-th nearest background "
                                                                "image [10]")
    p.add_argument("--max-background", type=int, help="use only the first N training images as background")
    add_embedding_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkcopy.data.benchmark import load_benchmark
    from qkcopy.retrieval.calibrate import calibrate
    from qkcopy.model.trained import load_trained

    trained = load_trained(args.model, args.device)
    benchmark = load_benchmark(args.benchmark)
    run_dir = Path(args.model) if (Path(args.model) / "config.yaml").exists() else Path(args.model).parent.parent
    out = args.out or run_dir / "eval" / Path(args.benchmark).resolve().name
    cal = calibrate(trained, benchmark, out, k=args.k, normalize=args.normalize, beta=args.beta,
                    n_background=args.n_background, max_background=args.max_background,
                    batch_size=args.batch, workers=args.workers)
    rows = [("raw", cal.metrics)] + ([(f"normalised β={args.beta:g}", cal.normalized)] if cal.normalized else [])
    print(f"{'scores':16s} {'µAP':>7s} {'R@P90':>7s} {'recall@1':>9s}")
    for name, m in rows:
        print(f"{name:16s} {m.micro_ap:7.4f} {m.recall_at_p90:7.4f} {m.recall_at_1:9.4f}")
    t = cal.threshold
    print(f"copy threshold {t.score:.4g} (precision {t.precision:.3f}, recall {t.recall:.3f}"
          f"{'' if t.target_met else f'; precision {t.target_precision} not reached'}) → {out / 'threshold.json'}")
    print(f"outputs: {out}")
    return 0
