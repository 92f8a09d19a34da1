"""The HTTP API (FastAPI): thin handlers over `MatchService`, typed errors mapped to statuses in one place.

`create_app(service, keys)` takes its dependencies (the service with its collection and model, the key ring),
so tests run it in-process against a temporary collection; `qkcopy serve` builds the real ones and runs it
on uvicorn. Every error is JSON `{"error": {"code", "message"}}`; request bodies are capped before parsing.

Routes: POST /v1/match, POST /v1/references, GET/DELETE /v1/references/{id}, GET /v1/references/{id}/thumbnail,
GET /v1/references, GET /v1/stats, GET /v1/recent, /healthz, /readyz, /metrics, / (the review page),
/docs and /openapi.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from importlib import resources

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from qkcopy.evaluation.threshold import any_copy
from qkcopy.serve import schemas
from qkcopy.serve.auth import Forbidden, KeyRing, Unauthorized
from qkcopy.serve.batcher import NotRunning, Overloaded
from qkcopy.serve.metrics import Metrics
from qkcopy.serve.service import MatchService, NotFound, Timeout, UploadError

log = logging.getLogger(__name__)

MAX_METADATA_BYTES = 8192
MAX_NAME = 200


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with 413 before any parsing."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = _error(413, "too_large", f"request body over the limit of {self.limit} bytes")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await too_big(scope, receive, send)
        body, more = [], True
        size = 0
        while more:  # read (bounded) before the app parses anything, so a chunked upload is capped too
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.append(message.get("body", b""))
            size += len(body[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await too_big(scope, receive, send)
        data = b"".join(body)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def create_app(service: MatchService, keys: KeyRing, snapshot_interval_s: float = 300.0) -> FastAPI:
    metrics = Metrics(service)
    service.batcher.on_batch = metrics.on_batch
    limits = service.limits

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
                  version="1", lifespan=lifespan,
                  responses={400: {"model": schemas.Error}, 401: {"model": schemas.Error}, 403: {"model": schemas.Error},
                             413: {"model": schemas.Error}, 422: {"model": schemas.Error}, 429: {"model": schemas.Error},
                             503: {"model": schemas.Error}})
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes)

    # --- errors: one place ---
    def retry(err) -> dict:
        return {"Retry-After": str(getattr(err, "retry_after", 1))}

    handlers = {
        Unauthorized: lambda r, e: _error(401, "unauthorized", str(e), {"WWW-Authenticate": "Bearer"}),
        Forbidden: lambda r, e: _error(403, "forbidden", str(e)),
        UploadError: lambda r, e: _error(e.status, {413: "too_large", 415: "not_an_image"}.get(e.status, "bad_image"),
                                         str(e)),
        NotFound: lambda r, e: _error(404, "not_found", str(e)),
        Overloaded: lambda r, e: _error(429, "overloaded", str(e), retry(e)),
        NotRunning: lambda r, e: _error(503, "unavailable", str(e), retry(e)),
        Timeout: lambda r, e: _error(503, "timeout", str(e), retry(e)),
        ValueError: lambda r, e: _error(400, "bad_request", str(e)),
        RequestValidationError: lambda r, e: _error(422, "invalid_request", "; ".join(
            f"{'.'.join(str(x) for x in err['loc'] if x != 'body')}: {err['msg']}" for err in e.errors())),
        StarletteHTTPException: lambda r, e: _error(e.status_code, "http_error", str(e.detail)),
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "other")
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    def need(scope: str):
        def check(request: Request):
            return keys.check(_token(request), scope)
        return Depends(check)

    async def wait(futures):
        try:
            return await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)), limits.timeout_s)
        except TimeoutError:
            for f in futures:
                f.cancel()
            raise Timeout(f"the model did not answer within {limits.timeout_s:g} s") from None

    async def read_uploads(files: list[UploadFile]):
        named = [((f.filename or f"image{i}")[:MAX_NAME], await f.read()) for i, f in enumerate(files)]
        return await run_in_threadpool(lambda: [service.prepare(data, name) for name, data in named])

    # --- matching ---

    @app.post("/v1/match", response_model=schemas.MatchResponse, dependencies=[need("read")],
              summary="Is each uploaded image a copy of a reference? Top-k matches with scores and verdicts.")
    async def match(images: list[UploadFile] = File(..., description="one or more image files"),
                    k: int = Form(10, ge=1, le=100), bank: str | None = Form(None, min_length=1, max_length=64)):
        if len(images) > limits.max_images:
            raise UploadError(413, f"{len(images)} images in one request; the limit is {limits.max_images}")
        uploads = await read_uploads(images)
        futures = []
        try:
            for u in uploads:
                futures.append(service.submit_match(u, k, bank))
        except Exception:
            for f in futures:
                f.cancel()
            raise
        found = await wait(futures)
        service.remember(uploads, found)
        t = service.collection.threshold_score
        return schemas.MatchResponse(
            model=service.collection.fingerprint, threshold=t,
            results=[schemas.ImageResult(image=u.name, is_copy=any_copy([m.score for m in ms], t),
                                         matches=[schemas.Match(**vars(m)) for m in ms])
                     for u, ms in zip(uploads, found)])

    # --- references ---

    @app.post("/v1/references", response_model=schemas.Added, dependencies=[need("write")], status_code=201,
              summary="Add a reference image (described with K); the same bytes in the same bank are not added twice.")
    async def add_reference(image: UploadFile = File(...), bank: str = Form("default", min_length=1, max_length=64),
                            metadata: str = Form("{}", description="a JSON object"),
                            name: str | None = Form(None, max_length=MAX_NAME)):
        if len(metadata.encode()) > MAX_METADATA_BYTES:
            raise UploadError(413, f"metadata: over {MAX_METADATA_BYTES} bytes")
        try:
            meta = json.loads(metadata)
        except json.JSONDecodeError as err:
            raise ValueError(f"metadata: not valid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"metadata: must be a JSON object, got {type(meta).__name__}")
        (upload,) = await read_uploads([image])
        (vector,) = await wait([service.submit_describe(upload)])
        added = await run_in_threadpool(service.add, upload, vector, bank, meta, name)
        body = schemas.Added(id=added.id, existing=added.existing)
        return JSONResponse(body.model_dump(), 200 if added.existing else 201)

    def _get(ref_id: int):
        ref = service.collection.get(ref_id)
        if ref is None:
            raise NotFound(f"no reference with id {ref_id}")
        return ref

    @app.get("/v1/references/{ref_id}", response_model=schemas.Reference, dependencies=[need("read")])
    def get_reference(ref_id: int):
        return schemas.Reference(**{**_get(ref_id).as_dict()})

    @app.get("/v1/references/{ref_id}/thumbnail", dependencies=[need("read")], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    def get_thumbnail(ref_id: int):
        thumb = service.collection.store.thumbnail(ref_id)
        if not thumb:
            raise NotFound(f"no thumbnail for reference {ref_id}")
        return Response(thumb, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.delete("/v1/references/{ref_id}", status_code=204, dependencies=[need("write")])
    def delete_reference(ref_id: int):
        if not service.collection.remove([ref_id]):
            raise NotFound(f"no reference with id {ref_id}")
        return Response(status_code=204)

    @app.get("/v1/references", response_model=list[schemas.Reference], dependencies=[need("read")])
    def list_references(bank: str | None = Query(None, min_length=1, max_length=64), after: int = Query(0, ge=0),
                        limit: int = Query(100, ge=1, le=1000)):
        return [schemas.Reference(**r.as_dict()) for r in service.collection.list(bank, after, limit)]

    @app.get("/v1/stats", response_model=schemas.Stats, dependencies=[need("read")])
    def stats():
        s = service.collection.stats()
        return schemas.Stats(**{k: v for k, v in s.items() if k in schemas.Stats.model_fields},
                             queue_depth=service.batcher.depth)

    @app.get("/v1/recent", response_model=list[schemas.Recent], dependencies=[need("read")])
    def recent():
        return list(service.recent)

    # --- operations ---

    @app.get("/healthz", response_model=schemas.Health)
    def healthz():
        return schemas.Health(status="ok")

    @app.get("/readyz", response_model=schemas.Health, responses={503: {"model": schemas.Health}})
    def readyz():
        if not service.ready:
            return JSONResponse({"status": "not ready"}, 503, {"Retry-After": "1"})
        return schemas.Health(status="ready")

    @app.get("/metrics", response_class=Response)
    def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    page = resources.files("qkcopy.serve").joinpath("static/review.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def review_page():
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                           "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"})

    return app


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
