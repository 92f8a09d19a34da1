"""Typed errors mapped to HTTP statuses, in one place; every error body is `{"error": {"code", "message"}}`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qkcopy.serve.auth import Forbidden, Unauthorized
from qkcopy.serve.batcher import NotRunning, Overloaded
from qkcopy.serve.service import NotFound, Timeout, UploadError


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers)


def _retry(err) -> dict:
    return {"Retry-After": str(getattr(err, "retry_after", 1))}


def _invalid(err: RequestValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc'] if x != 'body')}: {e['msg']}" for e in err.errors())


HANDLERS = {
    Unauthorized: lambda r, e: error_response(401, "unauthorized", str(e), {"WWW-Authenticate": "Bearer"}),
    Forbidden: lambda r, e: error_response(403, "forbidden", str(e)),
    UploadError: lambda r, e: error_response(
        e.status, {413: "too_large", 415: "not_an_image"}.get(e.status, "bad_image"), str(e)),
    NotFound: lambda r, e: error_response(404, "not_found", str(e)),
    Overloaded: lambda r, e: error_response(429, "overloaded", str(e), _retry(e)),
    NotRunning: lambda r, e: error_response(503, "unavailable", str(e), _retry(e)),
    Timeout: lambda r, e: error_response(503, "timeout", str(e), _retry(e)),
    ValueError: lambda r, e: error_response(400, "bad_request", str(e)),
    RequestValidationError: lambda r, e: error_response(422, "invalid_request", _invalid(e)),
    StarletteHTTPException: lambda r, e: error_response(e.status_code, "http_error", str(e.detail)),
}


def install(app: FastAPI) -> None:
    for kind, handler in HANDLERS.items():
        app.add_exception_handler(kind, handler)
