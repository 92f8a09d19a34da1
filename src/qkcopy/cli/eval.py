"""`qkcopy eval`: a trained model on a benchmark — µAP, R@P90, recall@1, PR curve, predictions, and the
calibrated copy threshold (threshold.json) that `qkcopy search` uses."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkcopy.cli import add_embedding_options, add_region_options, region_defaults


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
    p.add_argument("--calibration", choices=("lower-bound", "point"), default="lower-bound",
                   help="threshold where the 95%% lower confidence bound of precision reaches 0.9 (lower-bound, "
                        "default) or where precision itself does (point)")
    p.add_argument("--heldout-benchmark", type=Path, help="also report the threshold's precision and recall on "
                   "this benchmark, e.g. one made with `make-benchmark --heldout all`")
    p.add_argument("--test-size", type=int, help="input side for the descriptors [the run's model.test_size, "
                   "else its training size]")
    add_region_options(p, "regions.csv gives each pair's winning box",
                       "verify each query's K best references by local features (SIFT + RANSAC) and re-score them: "
                       "score + bonus × confidence; verification.csv gives inliers and the copy's outline [0]")
    p.add_argument("--verify-bonus", type=float, default=1.0, help="score added at confidence 1 [1.0]")
    add_embedding_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkcopy.data.benchmark import load_benchmark
    from qkcopy.evaluation.calibrate import calibrate
    from qkcopy.model.trained import load_trained

    trained = load_trained(args.model, args.device, args.test_size)
    region_defaults(args, trained)
    benchmark = load_benchmark(args.benchmark)
    run_dir = Path(args.model) if (Path(args.model) / "config.yaml").exists() else Path(args.model).parent.parent
    out = args.out or run_dir / "eval" / Path(args.benchmark).resolve().name
    heldout = load_benchmark(args.heldout_benchmark) if args.heldout_benchmark else None
    cal = calibrate(trained, benchmark, out, k=args.k, normalize=args.normalize, beta=args.beta,
                    n_background=args.n_background, max_background=args.max_background,
                    batch_size=args.batch, workers=args.workers, rule=args.calibration, heldout=heldout,
                    regions=args.regions, region_margin=args.region_margin, verify=_verify_config(args),
                    region_size=args.region_size)
    rows = [("raw", cal.metrics)] + ([(f"normalised β={args.beta:g}", cal.normalized)] if cal.normalized else [])
    print(f"{'scores':16s} {'µAP':>7s} {'R@P90':>7s} {'recall@1':>9s}")
    for name, m in rows:
        print(f"{name:16s} {m.micro_ap:7.4f} {m.recall_at_p90:7.4f} {m.recall_at_1:9.4f}")
    t = cal.threshold
    print(f"copy threshold {t.score:.4g} ({t.rule}: precision {t.precision:.3f}, 95% lower bound "
          f"{t.precision_lower:.3f}, recall {t.recall:.3f}"
          f"{'' if t.target_met else f'; precision {t.target_precision} not reached'}) → {out / 'threshold.json'}")
    _print_transfer(cal)
    print(f"outputs: {out}")
    return 0


def _verify_config(args: argparse.Namespace):
    from qkcopy.data.verify import VerifyConfig

    return VerifyConfig(k=args.verify, max_side=args.verify_side, bonus=args.verify_bonus) if args.verify else None


def _print_transfer(cal) -> None:
    """What precision to expect on copies unlike the calibration's: each edit family left out in turn, and the
    held-out benchmark when one was given."""
    from qkcopy.evaluation.transfer import pooled

    if cal.per_family:
        print("per edit family:  " + "  ".join(f"{f} {v['micro_ap']:.3f}" for f, v in cal.per_family.items())
              + "  (µAP; recall@1 and copies in summary.json)")
    if cal.families:
        together, worst = pooled(cal.families)
        name = min((f for f in cal.families if f.flagged), key=lambda f: f.precision, default=None)
        print(f"on unfamiliar edits expect precision about {together:.3f}: each edit family left out of the "
              f"calibration in turn, pooled (worst: {name.family if name else '-'} {worst:.3f})")
    else:
        print("on unfamiliar edits: not measured (the benchmark lists no edit families); give "
              "--heldout-benchmark to measure it")
    if cal.heldout:
        h = cal.heldout
        print(f"on {h['benchmark']}: precision {h['precision']:.3f}, recall {h['recall']:.3f} at this threshold "
              f"({h['flagged']} pairs flagged; µAP {h['micro_ap']:.4f})")
