"""Operations and the review page: stats, recent matches, health, readiness, Prometheus metrics, `/`."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qkcopy.serve import schemas
from qkcopy.serve.deps import need, service
from qkcopy.serve.schemas import errors
from qkcopy.serve.service import MatchService

PAGE = resources.files("qkcopy.serve").joinpath("static/review.html").read_text(encoding="utf-8")
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'")

router = APIRouter()


@router.get("/v1/stats", response_model=schemas.Stats, dependencies=[need("read")],
            responses=errors(401, 403))
def stats(svc: MatchService = Depends(service)):
    s = svc.collection.stats()
    return schemas.Stats(**{k: v for k, v in s.items() if k in schemas.Stats.model_fields},
                         queue_depth=svc.batcher.depth)


@router.get("/v1/recent", response_model=list[schemas.Recent], dependencies=[need("read")],
            responses=errors(401, 403))
def recent(svc: MatchService = Depends(service)):
    return list(svc.recent)


@router.get("/healthz", response_model=schemas.Health)
def healthz():
    return schemas.Health(status="ok")


NOT_READY = {"model": schemas.Health, "description": "not ready (Retry-After)",
             "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}}


@router.get("/readyz", response_model=schemas.Health, responses={503: NOT_READY})
def readyz(svc: MatchService = Depends(service)):
    if not svc.ready:
        return JSONResponse({"status": "not ready"}, 503, {"Retry-After": "1"})
    return schemas.Health(status="ready")


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def prometheus(request: Request):
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def review_page():
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": PAGE_CSP})
