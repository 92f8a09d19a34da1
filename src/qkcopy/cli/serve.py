"""`qkcopy serve`: the copy-matching HTTP service (FastAPI on uvicorn) over a reference collection.

Every option can also come from an environment variable (QKCOPY_HOST, QKCOPY_PORT, …: the option's name in
capitals, prefixed); flags win. Binds 127.0.0.1 unless told otherwise. When the collection has no API key
yet, one with both scopes is created and printed once (manage keys with `qkcopy collection key`)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

OPTIONS = (  # name, type, default, help
    ("host", str, "127.0.0.1", "address to bind"),
    ("port", int, 8000, "port"),
    ("model", Path, None, "run directory [the collection's model]"),
    ("device", str, "auto", "cpu, cuda, cuda:1 …"),
    ("runtime", str, "torch", "torch, or onnx (onnxruntime on the CPU, ~2.3x faster; exported once)"),
    ("max_batch", int, 16, "images per model call"),
    ("max_wait_ms", float, 5.0, "longest a request waits for others to share its model call"),
    ("queue", int, 64, "images waiting for the model before requests get 429"),
    ("max_upload_mb", float, 20.0, "largest request body"),
    ("max_pixels", int, 40_000_000, "largest decoded image"),
    ("timeout", float, 10.0, "seconds a request may wait for the model before 503"),
    ("threads", int, 0, "torch threads [0: torch's default]"),
    ("snapshot_interval", float, 300.0, "seconds between index snapshots (when it changed)"),
    ("max_connections", int, 256, "concurrent connections before 503"),
    ("regions", int, None, "query regions (0..16) described beside each whole query, for copies inside other "
                           "pictures: 1 + N descriptors per query; a request's `regions` field overrides it "
                           "[None: the model's model.regions]"),
    ("region_margin", float, None, "added to a region's squared distance, not the whole image's (as `qkcopy eval "
                                   "--region-margin`: calibrate the threshold with the same) [None: the model's]"),
    ("region_size", int, None, "regions' input side; smaller is cheaper [None: the model's region_size, else its "
                               "input side; 0: its input side]"),
    ("verify", int, 0, "matches of each query (0..10) verified by local features (SIFT + RANSAC) and re-scored "
                       "score + 1.0 x confidence, as `qkcopy eval --verify K` (calibrate with the same); each gets "
                       "its confidence and outline (quad); a request's `verify` field overrides it; needs --references"),
    ("references", Path, None, "folder of the references' image files, found by name and content (sha256), "
                               "to verify matches with"),
    ("verify_side", int, 320, "images shrunk to this side to verify (as `qkcopy eval --verify-side`)"),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve matching over HTTP (API, review page, metrics)", description=__doc__,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("collection", type=Path, help="collection folder from `qkcopy collection create`")
    for name, kind, default, help_ in OPTIONS:
        env = f"QKCOPY_{name.upper()}"
        value = os.environ.get(env)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{help_} (env {env})",
                       default=kind(value) if value is not None else default)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from qkcopy.serve.app import create_app
    from qkcopy.serve.auth import KeyRing, create_key
    from qkcopy.serve.service import Limits, open_service

    if args.threads:
        torch.set_num_threads(args.threads)
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2 ** 20), max_pixels=args.max_pixels,
                    timeout_s=args.timeout, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                    queue_size=args.queue)
    service = open_service(args.collection, args.model, args.device, limits, args.runtime, args.regions,
                           args.region_margin, args.region_size, args.verify, args.references, args.verify_side)
    keys = KeyRing(service.collection.store)
    if len(keys) == 0:
        token = create_key(service.collection.store, "admin", ["read", "write"])
        print(f"no API key yet: created 'admin' (read, write). It is shown once, and stored only hashed:\n\n"
              f"    {token}\n\nsend it as 'Authorization: Bearer <key>' (or paste it into the review page); "
              "more keys: `qkcopy collection key`", flush=True)
    config = {name: getattr(args, name) for name, *_ in OPTIONS}
    config["model"] = service.describer.trained.checkpoint  # the pinned model when --model was not given
    log.info("qkcopy serve %s: %s", args.collection, ", ".join(f"{k}={v}" for k, v in config.items()))
    log.info("review page and API on http://%s:%d/ (OpenAPI docs: /docs)", args.host, args.port)
    app = create_app(service, keys, args.snapshot_interval)
    uvicorn.run(app, host=args.host, port=args.port, limit_concurrency=args.max_connections,
                timeout_keep_alive=5, timeout_graceful_shutdown=10, log_level="info")
    return 0
