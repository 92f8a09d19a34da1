"""`qkcopy baseline`: evaluate an untrained baseline (GIST+PCA, off-the-shelf CNN, PDQ, pHash, tiny) on a benchmark.

Prints µAP, recall at precision 0.9, recall@1 and the run directory (summary.json, predictions.csv,
pr_curve.png, descriptors). See qkcopy.baselines.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from qkcopy.baselines.runner import METHODS, BaselineOptions, run_baseline
from qkcopy.data.benchmark import load_benchmark


def _run(args: argparse.Namespace) -> int:
    bench = load_benchmark(Path(args.benchmark))
    out = Path(args.out) if args.out else Path("runs") / f"baseline-{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    options = BaselineOptions(pca_dim=args.pca_dim, pca_max_train=args.pca_max_train, backbone=args.backbone,
                              weights=args.weights, input_size=args.input_size, workers=args.workers,
                              device=args.device)
    m = run_baseline(args.method, bench, out, k=args.k, max_results=args.max_results, options=options)
    print(f"{args.method}: µAP {m.micro_ap:.4f}  R@P90 {m.recall_at_p90:.4f}  recall@1 {m.recall_at_1:.4f}")
    print(f"run directory: {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("baseline", help="evaluate GIST / off-the-shelf backbone / PDQ / pHash / tiny-image "
                              "on a benchmark",
                              description=__doc__.splitlines()[0])
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--benchmark", required=True, help="benchmark folder (qkcopy layout or a DISC21 download)")
    p.add_argument("--out", help="run directory (default runs/baseline-<method>-<timestamp>)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--max-results", type=int, help="keep only the N best pairs overall (ISC2021 used 500000)")
    d = BaselineOptions()
    p.add_argument("--pca-dim", type=int, default=d.pca_dim, help=f"GIST / backbone PCA output dim (default {d.pca_dim})")
    p.add_argument("--pca-max-train", type=int, default=d.pca_max_train,
                   help=f"training images used to fit the PCA (default {d.pca_max_train})")
    p.add_argument("--backbone", default=d.backbone, help=f"backbone method: timm model (default {d.backbone})")
    p.add_argument("--weights", default=d.weights,
                   help="backbone method: 'imagenet' (default) or a local state-dict file")
    p.add_argument("--input-size", type=int, default=d.input_size,
                   help=f"backbone method: images resized to S×S (default {d.input_size})")
    p.add_argument("--workers", type=int, default=d.workers, help=f"image-decoding processes (default {d.workers})")
    p.add_argument("--device", default=d.device, help="backbone method: auto (default), cpu or cuda")
    p.set_defaults(func=_run)
