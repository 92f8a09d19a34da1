"""`qkcopy demo`: build a small benchmark, run the GIST and off-the-shelf baselines and a short QK Iteration,
print the results table and write report.md / report.html with PR curves, loss curves and a retrieval sheet.

Offline and argument-free: without --images it draws its own photo-like images. See qkcopy.demo.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from qkcopy.config import preset_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end-to-end demo: benchmark, baselines, short QK training, report",
                       description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, help="folder of your own photos (default: generated images)")
    p.add_argument("--out", type=Path, help="output folder [runs/demo-<time>]")
    p.add_argument("--quick", action="store_true", help="smaller and shorter (about a quarter of the time)")
    p.add_argument("--seed", type=int, default=0, help="seed of the images, benchmark and training [0]")
    p.add_argument("--config", default="demo",
                   help=f"training preset ({', '.join(preset_names())}) or YAML file [demo]")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="training-config overrides (model.image_size=96), or demo sizes (demo.n_train=300)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkcopy.report.demo import QUICK, DemoOptions, print_results, run_demo, split_overrides

    options = DemoOptions(**QUICK) if args.quick else DemoOptions()
    options = split_overrides(dataclasses.replace(options, seed=args.seed, config=args.config), args.overrides)
    out = args.out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    print_results(run_demo(out, args.images, options))
    return 0
