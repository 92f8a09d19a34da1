"""The `qkcopy` console script: one subcommand per module in this package.

Each subcommand module defines `register(subparsers)`, which adds its parser and sets `func` to a thin
wrapper over a typed library function. `main` is the one error boundary: any error a user can cause ends in
one line, `qkcopy <command>: error: …`, and a non-zero exit (2; 1 for an internal error, 130 for Ctrl-C);
`--debug` (or `-v`) also prints the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from qkcopy.errors import one_line

# One entry per subcommand module in qkcopy.cli; add yours here.
COMMANDS: tuple[str, ...] = ('augment', 'make_benchmark', 'baseline', 'train', 'embed', 'index', 'search', 'eval', 'export', 'bench', 'demo',
                             'collection', 'serve', 'match', 'dedup', 'bench_serve', 'bench_stores', 'families')


def count(minimum: int):
    """An argparse type: an integer >= `minimum`, refused at parse time with the option's name."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def add_embedding_options(p: argparse.ArgumentParser) -> None:
    """--batch, --workers, --device: shared by the commands that embed images with a trained model."""
    p.add_argument("--batch", type=count(1), default=64, help="images per batch [64]")
    p.add_argument("--workers", type=count(0), default=2, help="image-decoding processes [2]")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … [auto]")


def add_region_options(p: argparse.ArgumentParser, scored: str, verify_help: str) -> None:
    """--regions, --region-margin, --region-size, --verify, --verify-side: `qkcopy eval` and `qkcopy search`.
    scored: what carries the winning region ("regions.csv gives each pair's winning box", …). The region
    options default to the run's own (`model.regions`, …: `region_defaults`)."""
    p.add_argument("--regions", type=count(0),
                   help="also describe N regions of each query image (a copy inside a bigger picture); a pair's "
                        f"score is the best over them; {scored}; 0: the whole image only [the run's model.regions]")
    p.add_argument("--region-margin", type=float,
                   help="added to a region's squared distance (not the whole image's) [the run's model.region_margin]")
    p.add_argument("--region-size", type=count(32),
                   help="input side the regions are described at [the run's model.region_size, else its input side]")
    p.add_argument("--verify", type=count(0), default=0, metavar="K", help=verify_help)
    p.add_argument("--verify-side", type=count(32), default=320, help="images shrunk to this side to verify [320]")


def region_defaults(args: argparse.Namespace, trained) -> None:
    """Fill the region options not given on the command line with the run's own (its preset's choice)."""
    args.regions, args.region_margin, args.region_size = trained.query_regions(args.regions, args.region_margin,
                                                                               args.region_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qkcopy", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (and tracebacks)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"qkcopy.cli.{name}").register(sub)
    for command in sub.choices.values():  # `qkcopy search … --debug` works too
        if "--debug" not in command._option_string_actions:
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="print the traceback of an error")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    debug = args.debug or args.verbose
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _fail(args.command, "interrupted", debug)
        return 130
    except (ValueError, OSError) as err:  # every qkcopy.errors.QkcopyError, bad values, missing files
        _fail(args.command, one_line(err), debug)
        return 2
    except Exception as err:  # a bug, not the user's mistake: still one line, the traceback on request
        _fail(args.command, f"internal error ({type(err).__name__}: {one_line(err)}); rerun with --debug for "
                            "the traceback and report it", debug)
        return 1


def _fail(command: str, message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"qkcopy {command}: error: {message}", file=sys.stderr)
