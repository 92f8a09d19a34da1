"""`qkcopy collection`: a persistent reference collection (SQLite + a faiss cache, or SQLite + Milvus) for
`qkcopy serve` and `qkcopy match`: create, add, import, remove, list, stats, snapshot, reindex, API keys."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qkcopy.retrieval.faiss_index import INDEX_TYPES, RERANK  # faiss itself is loaded only when an index is built


def parse_meta(items: list[str] | None) -> dict:
    meta = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--meta takes key=value, got {item!r}")
        meta[key] = value
    return meta


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collection", help="create and manage a reference collection", description=__doc__)
    cmds = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name, help_, func):
        q = cmds.add_parser(name, help=help_, description=help_)
        q.add_argument("collection", type=Path, help="collection folder")
        q.set_defaults(func=func)
        return q

    def add_options(q, model_required):
        if model_required:  # create: images are optional, so an option (a "*" positional after options is lost)
            q.add_argument("--add", dest="images", action="append", type=Path, default=[], metavar="PATH",
                           help="image file or folder to add right away (repeatable)")
        else:
            q.add_argument("images", nargs="+", type=Path, help="image files or folders (searched recursively)")
        q.add_argument("--model", type=Path, required=model_required,
                       help="run directory" + ("" if model_required else " [the collection's model]"))
        q.add_argument("--bank", default="default", help="bank the references go into [default]")
        q.add_argument("--meta", action="append", metavar="KEY=VALUE", help="metadata for every reference added")
        q.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … [auto]")
        q.add_argument("--batch", type=int, default=32, help="images per batch [32]")

    q = action("create", "create a collection pinned to a model (and threshold); optionally add images", _create)
    add_options(q, True)
    how = q.add_mutually_exclusive_group()
    how.add_argument("--threshold", help="threshold.json from `qkcopy eval` (or its folder), or a score [none]")
    how.add_argument("--calibrate", type=Path, metavar="BENCHMARK",
                     help="calibrate the threshold on this benchmark now (as `qkcopy eval`; the calibration is "
                          "kept in COLLECTION/calibration)")
    q.add_argument("--store", default="faiss", metavar="STORE",
                   help="where the vectors live: faiss (embedded), milvus-lite (Milvus in-process, "
                        "COLLECTION/milvus.db) or milvus://HOST:PORT (a Milvus server) [faiss]")
    add_options(action("add", "add reference images (exact re-adds are recognised)", _add), False)
    q = action("import", "import reference descriptors written by `qkcopy embed` (resumable; index built once)",
               _import)
    q.add_argument("descriptors", nargs="+", type=Path, help="PREFIX.h5 or PREFIX.npy files of `qkcopy embed`")
    q.add_argument("--bank", default="default", help="bank the references go into [default]")
    q.add_argument("--meta", action="append", metavar="KEY=VALUE", help="metadata for every reference imported")
    index_options(q, "--index", required=False)
    q = action("move", "keep the vectors in another store (faiss, milvus-lite, milvus://HOST:PORT), built from "
               "the database", _move)
    q.add_argument("--store", required=True, metavar="STORE", help="faiss, milvus-lite or milvus://HOST:PORT")
    q = action("remove", "remove references by id", _remove)
    q.add_argument("ids", nargs="+", type=int, help="reference ids")
    q = action("list", "list references (JSON lines)", _list)
    q.add_argument("--bank", help="only this bank")
    q.add_argument("--after", type=int, default=0, help="ids after this one [0]")
    q.add_argument("--limit", type=int, default=100, help="how many [100]")
    q = action("stats", "counts per bank, model, threshold, index; --check compares index and database", _stats)
    q.add_argument("--check", action="store_true", help="load the index and check that it equals the database")
    action("snapshot", "write the index snapshot now (faster start-up)", _snapshot)
    q = action("reindex", "rebuild the index as another type (IVF types trained on the references)", _reindex)
    index_options(q, "--type", required=True)
    q = action("key", "API keys of the service: create (printed once), list, revoke", _key)
    q.add_argument("key_action", choices=("create", "list", "revoke"))
    q.add_argument("name", nargs="?", help="key name (create, revoke)")
    q.add_argument("--scope", action="append", choices=("read", "write"),
                   help="scope of a new key; repeat for both [read]")


def _add_images(coll, args) -> None:
    from qkcopy.collection.collection import check_bank
    from qkcopy.collection.describe import Describer, add_files
    from qkcopy.data.images import scan_images

    check_bank(args.bank)
    meta = parse_meta(args.meta)
    missing = [p for p in args.images if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such image file or folder: {missing[0]}")
    paths = [q for p in args.images for q in (scan_images(p) if p.is_dir() else [p])]
    trained = coll.load_model(args.model, args.device)
    added, present, skips = add_files(coll, Describer(trained), paths, args.bank, meta, args.batch)
    skips.report(what="images (not added)")
    print(f"added {added} references to bank {args.bank!r} ({present} already present, {skips.count} unreadable); "
          f"collection now holds {coll.stats()['references']}")


def _create(args) -> int:
    from qkcopy.collection import Collection
    from qkcopy.model.trained import load_trained
    from qkcopy.evaluation.threshold import load_threshold

    trained = load_trained(args.model, args.device)
    if (args.collection / "collection.db").exists():
        raise FileExistsError(f"{args.collection} already holds a collection; add to it with `qkcopy collection add`")
    from qkcopy.collection.vector_store import check_store

    check_store(args.store)  # before any calibration work
    threshold = load_threshold(args.threshold, trained.fingerprint) if args.threshold else None
    if args.calibrate:
        from qkcopy.data.benchmark import load_benchmark
        from qkcopy.evaluation.calibrate import calibrate

        cal = calibrate(trained, load_benchmark(args.calibrate), args.collection / "calibration", workers=0)
        threshold = cal.threshold
        print(f"calibrated on {args.calibrate}: µAP {cal.metrics.micro_ap:.3f}; threshold {threshold.score:.4g} "
              f"(precision {threshold.precision:.3f}, recall {threshold.recall:.3f})")
    with Collection.create(args.collection, trained.fingerprint, trained.cfg.model.descriptor_dim, args.model,
                           threshold, args.store) as coll:
        print(f"collection {args.collection}: model {coll.fingerprint}, threshold "
              f"{'none (matches are ranked, not labelled)' if threshold is None else coll.threshold_score}")
        if args.images:
            _add_images(coll, args)
    return 0


def _add(args) -> int:
    from qkcopy.collection import Collection

    with Collection.open(args.collection) as coll:
        _add_images(coll, args)
    return 0


def _import(args) -> int:
    from qkcopy.collection import Collection
    from qkcopy.collection.ingest import import_descriptors

    meta = parse_meta(args.meta)
    with Collection.open(args.collection) as coll:
        index = None if args.type is None else dict(kind=args.type, nlist=args.nlist, nprobe=args.nprobe, m=args.m,
                                                     rerank=args.rerank)
        done = import_descriptors(coll, args.descriptors, args.bank, meta, index=index)
        print(f"imported {done.added} references into bank {args.bank!r} from {done.files} files ({done.present} "
              f"already present); collection now holds {coll.stats()['references']}")
    return 0


def _move(args) -> int:
    from qkcopy.collection import Collection

    with Collection.open(args.collection) as coll:
        n = coll.move_vectors(args.store)
    print(f"{args.collection}: {n} references now searched in {args.store}")
    return 0


def _remove(args) -> int:
    from qkcopy.collection import Collection

    with Collection.open(args.collection) as coll:
        gone = coll.remove(args.ids)
    missing = sorted(set(args.ids) - set(gone))
    print(f"removed {len(gone)} references" + (f"; not found: {missing}" if missing else ""))
    return 0 if not missing else 1


def _list(args) -> int:
    from qkcopy.collection import Collection

    with Collection.open(args.collection) as coll:
        for ref in coll.list(args.bank, args.after, args.limit):
            print(json.dumps(ref.as_dict()))
    return 0


def _stats(args) -> int:
    from qkcopy.collection import Collection

    with Collection.open(args.collection) as coll:
        stats = coll.stats()
        if args.check:
            stats["check"] = coll.check()
    print(json.dumps(stats, indent=1))
    return 0 if not args.check or stats["check"]["consistent"] else 1


def _snapshot(args) -> int:
    from qkcopy.collection import Collection

    with Collection.open(args.collection) as coll:
        seq = coll.snapshot()
        print(f"snapshot of {len(coll.index())} references at change {seq} in {args.collection / 'cache'}")
    return 0


def index_options(q: argparse.ArgumentParser, flag: str, required: bool) -> None:
    """The index type and its parameters (reindex; import, which builds the index once at the end)."""
    q.add_argument(flag, dest="type", choices=INDEX_TYPES, required=required,
                   help="index type" + ("" if required else " built at the end [the collection's, flat at first]"))
    q.add_argument("--nlist", type=int, help="IVF cells [about 4·sqrt(N)]")
    q.add_argument("--nprobe", type=int, help="IVF cells searched [min(nlist, 16)]")
    q.add_argument("--m", type=int, help="IVF-PQ sub-quantisers [32]")
    q.add_argument("--rerank", type=int, help=f"IVF-PQ: shortlist k·R by code distance, order it by the exact "
                   f"vectors of the database (0: off) [{RERANK}]")


def _reindex(args) -> int:
    from qkcopy.collection import Collection

    with Collection.open(args.collection) as coll:
        coll.reindex(args.type, args.nlist, args.nprobe, args.m, args.rerank)
        print(f"{args.type} index of {len(coll.index())} references {coll.params}")
    return 0


def _key(args) -> int:
    from qkcopy.collection import Collection
    from qkcopy.serve.auth import create_key

    with Collection.open(args.collection) as coll:
        if args.key_action == "list":
            for name, _, scopes, _ in coll.store.keys():
                print(f"{name}\t{','.join(scopes)}")
            return 0
        if not args.name:
            raise ValueError(f"`key {args.key_action}` needs a key name")
        if args.key_action == "revoke":
            if not coll.store.revoke_key(args.name):
                raise ValueError(f"no API key named {args.name!r}")
            print(f"revoked {args.name}")
            return 0
        token = create_key(coll.store, args.name, args.scope or ["read"])
    print(token)
    print(f"(API key {args.name!r}, scopes {','.join(sorted(set(args.scope or ['read'])))}: shown once, stored "
          "hashed; clients send it as 'Authorization: Bearer <key>')", file=__import__("sys").stderr)
    return 0
