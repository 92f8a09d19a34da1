"""`qkcopy train`: QK Iteration (or the SimCLR/MoCo comparisons) on a benchmark's training images."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from qkcopy.config import preset_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train Q and K models (QK Iteration, or SimCLR/MoCo-style baselines)",
                       description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--benchmark", type=Path, help="benchmark dir: trains on its train/ and evaluates after "
                                                    "every phase")
    src.add_argument("--train-images", type=Path, help="folder of training images (no evaluation)")
    p.add_argument("--config", default="cpu", help=f"preset name ({', '.join(preset_names())}) or YAML file [cpu]")
    p.add_argument("--method", choices=("qk", "simclr", "moco"), help="overrides the config's method")
    p.add_argument("--out", type=Path, help="run directory [runs/<method>-<time>]")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--stop-after-steps", type=int, help="stop cleanly (with a checkpoint) after this many "
                                                        "steps in total; --resume continues later")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. loss.tau=0.05")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkcopy.data.benchmark import load_benchmark
    from qkcopy.config import load_config
    from qkcopy.data.images import scan_images
    from qkcopy.training.loop import train

    overrides = list(args.overrides) + ([f"method={args.method}"] if args.method else [])
    cfg = load_config(args.config, overrides)
    out = args.out or Path("runs") / f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    benchmark = load_benchmark(args.benchmark) if args.benchmark else None
    paths = benchmark.train_paths if benchmark else scan_images(args.train_images)
    rows = train(cfg, paths, out, benchmark, resume=args.resume, stop_after_steps=args.stop_after_steps)
    if rows:
        print(f"{'segment':8s} {'µAP':>7s} {'R@P90':>7s} {'recall@1':>9s}")
        for row in rows:
            print(f"{row['segment']:8s} {row['micro_ap']:7.4f} {row['recall_at_p90']:7.4f} "
                  f"{row['recall_at_1']:9.4f}")
    print(f"run directory: {out}")
    return 0
