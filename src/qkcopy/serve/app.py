"""The HTTP API (FastAPI): thin handlers over `MatchService`, typed errors mapped to statuses in one place.

`create_app(service, keys)` takes its dependencies (the service with its collection and model, the key ring),
so tests run it in-process against a temporary collection; `qkcopy serve` builds the real ones and runs it
on uvicorn. Every error is JSON `{"error": {"code", "message"}}` (errors.py); request bodies are capped
before parsing (guards.py).

Routes: POST /v1/match (routes_match.py); POST /v1/references, GET/DELETE /v1/references/{id},
GET /v1/references/{id}/thumbnail, GET /v1/references (routes_references.py); GET /v1/stats, GET /v1/recent,
/healthz, /readyz, /metrics, / (the review page) (routes_admin.py); /docs and /openapi.json.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from qkcopy.serve import errors, routes_admin, routes_match, routes_references
from qkcopy.serve.auth import KeyRing
from qkcopy.serve.guards import BodyLimit
from qkcopy.serve.metrics import ServiceMetrics
from qkcopy.serve.service import MatchService

log = logging.getLogger(__name__)


def create_app(service: MatchService, keys: KeyRing, snapshot_interval_s: float = 300.0) -> FastAPI:
    metrics = ServiceMetrics(service)
    service.batcher.on_batch = metrics.on_batch

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(service.start)
        stop = threading.Event()
        saver = threading.Thread(target=_snapshots, args=(service, stop, snapshot_interval_s), daemon=True)
        saver.start()
        log.info("ready: %d references, model %s", len(service.collection.index()), service.collection.fingerprint)
        yield
        stop.set()
        service.stop()
        await run_in_threadpool(service.collection.snapshot)

    app = FastAPI(title="qkcopy", description="Image copy detection over a reference collection (QK descriptors).",
                  version="1", lifespan=lifespan)
    app.state.service, app.state.keys, app.state.metrics = service, keys, metrics
    app.add_middleware(BodyLimit, limit=service.limits.max_upload_bytes)
    errors.install(app)
    app.middleware("http")(_measure)
    for router in (routes_match.router, routes_references.router, routes_admin.router):
        app.include_router(router)
    return app


async def _measure(request: Request, call_next):
    """Count each request by route, method and status, and time it."""
    start = time.perf_counter()
    response = await call_next(request)
    metrics = request.app.state.metrics
    route = getattr(request.scope.get("route"), "path", "other")
    metrics.requests.labels(route, request.method, str(response.status_code)).inc()
    metrics.latency.labels(route).observe(time.perf_counter() - start)
    return response


def _snapshots(service: MatchService, stop: threading.Event, every_s: float) -> None:
    """Snapshot the index every `every_s` seconds when it changed, so a restart replays few changes."""
    last = None
    while not stop.wait(every_s):
        try:
            seq = service.collection.index().seq
            if seq != last:
                last = service.collection.snapshot()
        except Exception:  # a failed snapshot costs start-up time, never data: keep serving
            log.exception("snapshot failed")
