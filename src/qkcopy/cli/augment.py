"""`qkcopy augment`: write synthetic query copies of a folder of images, their recipes and a contact sheet
(`qkcopy.data.query_folder`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkcopy.data.augment import STRENGTHS


def _run(args: argparse.Namespace) -> int:
    from qkcopy.data.query_folder import augment_folder

    augment_folder(Path(args.images), Path(args.out), n=args.n, strength=args.strength, seed=args.seed,
                   limit=args.limit)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("augment", help="write synthetic query copies (AugLy edits) and a contact sheet",
                              description=__doc__.splitlines()[0])
    p.add_argument("--images", required=True, help="folder of source images (searched recursively)")
    p.add_argument("--out", required=True, help="output folder for <stem>_q<k>.jpg, recipes.json, contact_sheet.png")
    p.add_argument("-n", type=int, default=4, help="edited copies per image (default 4)")
    p.add_argument("--strength", choices=STRENGTHS, default="medium", help="edit strength (default medium)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--limit", type=int, default=16, help="use the first N images; 0 for all (default 16)")
    p.set_defaults(func=_run)
