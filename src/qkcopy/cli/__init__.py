"""The `qkcopy` console script: one subcommand per module in this package.

Each subcommand module defines `register(subparsers)`, which adds its parser and sets `func` to a thin
wrapper over a typed library function.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# One entry per subcommand module in qkcopy.cli; add yours here.
COMMANDS: tuple[str, ...] = ('augment', 'make_benchmark', 'baseline', 'train', 'embed', 'index', 'search', 'eval', 'export', 'bench', 'demo')


def add_embedding_options(p: argparse.ArgumentParser) -> None:
    """--batch, --workers, --device: shared by the commands that embed images with a trained model."""
    p.add_argument("--batch", type=int, default=64, help="images per batch [64]")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes [2]")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … [auto]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qkcopy", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"qkcopy.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"qkcopy {args.command}: error: {err}", file=sys.stderr)
        return 2
