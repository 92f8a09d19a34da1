"""`qkcopy match`: is each image a copy of a reference? Asks a running `qkcopy serve` (--server URL, key
from --key or QKCOPY_API_KEY), or opens a collection folder directly (--collection DIR). Prints a line per
image (its verdict, best match and the query region it was found in) and, with --out, writes every match as
JSON. Query regions and verification as the service does them: the server's (with --collection, the model's
regions and no verification) unless --regions / --verify say otherwise."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkcopy.cli import count


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("match", help="match images against a served (or local) collection", description=__doc__)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="URL of a `qkcopy serve`, e.g. http://127.0.0.1:8000")
    where.add_argument("--collection", type=Path, help="a collection folder, opened in this process")
    p.add_argument("images", nargs="+", type=Path, help="image files or folders")
    p.add_argument("--key", help="API key [env QKCOPY_API_KEY]")
    p.add_argument("--k", type=int, default=5, help="matches per image [5]")
    p.add_argument("--bank", help="only references of this bank")
    p.add_argument("--batch", type=int, default=8, help="images per request [8]")
    p.add_argument("--regions", type=count(0), help="query regions (0..16) beside each whole image [the server's "
                                                    "--regions; with --collection, the model's model.regions]")
    p.add_argument("--verify", type=count(0), help="best matches (0..10) verified by local features and re-scored "
                                                   "[the server's --verify; with --collection 0]")
    p.add_argument("--references", type=Path, help="with --collection --verify: folder of the references' files")
    p.add_argument("--device", default="auto", help="with --collection: cpu, cuda … [auto]")
    p.add_argument("--out", type=Path, help="write all results as JSON")
    p.set_defaults(func=run)


def _local(args, paths) -> list[dict]:
    from qkcopy.data.images import ImageError
    from qkcopy.evaluation.threshold import any_copy
    from qkcopy.serve.service import open_service

    service = open_service(args.collection, device=args.device, regions=args.regions, verify=args.verify or 0,
                           references=args.references)
    results = []
    try:
        for path in paths:
            try:
                upload = service.prepare(path.read_bytes(), path.name, service.regions, service.verify)
            except (ImageError, ValueError) as err:
                results.append(dict(image=path.name, error=str(err)))
                continue
            matches = service.match_now([upload], args.k, args.bank, service.verify)[0]
            results.append(dict(image=path.name, is_copy=any_copy([m.score for m in matches],
                                                                   service.collection.threshold),
                                matches=[vars(m) for m in matches]))
    finally:
        service.collection.close()
    return results


def _remote(args, paths) -> list[dict]:
    import logging

    from qkcopy.client import ApiError, Client

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request

    results = []
    with Client(args.server, args.key) as client:
        for start in range(0, len(paths), args.batch):
            chunk = paths[start:start + args.batch]
            try:
                results += client.match(chunk, args.k, args.bank, args.regions, args.verify)["results"]
            except ApiError as err:
                if len(chunk) == 1 or err.status in (401, 403):
                    if err.status in (401, 403):
                        raise ValueError(f"{args.server}: {err}") from err
                    results.append(dict(image=chunk[0].name, error=err.message))
                    continue
                for path in chunk:  # find the bad file: one request each
                    try:
                        results += client.match([path], args.k, args.bank, args.regions, args.verify)["results"]
                    except ApiError as one:
                        results.append(dict(image=path.name, error=one.message))
    return results


def run(args: argparse.Namespace) -> int:
    import httpx

    from qkcopy.data.images import scan_images

    paths = [q for p in args.images for q in (scan_images(p) if p.is_dir() else [p])]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file: {missing[0]}")
    try:
        results = _remote(args, paths) if args.server else _local(args, paths)
    except httpx.HTTPError as err:
        raise ValueError(f"cannot reach {args.server} ({err}); is `qkcopy serve` running there?") from err
    for r in results:
        if "error" in r:
            print(f"{r['image']}\terror: {r['error']}")
            continue
        best = r["matches"][0] if r["matches"] else None
        verdict = {True: "COPY", False: "not a copy", None: "(no threshold)"}[r["is_copy"]]
        print(f"{r['image']}\t{verdict}" + (f"\tbest: #{best['id']} {best['name']} score {best['score']:.4g} "
                                            f"at {list(best['box'])}" if best else "\tno references"))
    if args.out:
        from qkcopy.io import atomic_write_json

        atomic_write_json(args.out, results)
    return 1 if any("error" in r for r in results) else 0
