"""`qkcopy export`: the Q and K models (GIST and PCA included) as TorchScript and ONNX, with a parity check
against PyTorch. See docs/EXPORT.md."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("torchscript", "onnx")  # qkcopy.export.FORMATS, not imported here: it loads torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export Q and K to TorchScript / ONNX", description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="run directory (or a checkpoint inside one)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS), help="[torchscript onnx]")
    p.add_argument("--check-images", type=Path, help="folder of images for the parity check [generated inputs]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkcopy.model.export import export_models
    from qkcopy.data.images import scan_images
    from qkcopy.model.trained import load_trained

    trained = load_trained(args.model, "cpu")
    check = scan_images(args.check_images)[:8] if args.check_images else []
    report = export_models(trained, args.out, args.format, check)
    for name, diff in report.max_abs_diff.items():
        print(f"{args.out / name}: max |Δ| vs PyTorch {diff:.2e}")
    return 0
