"""Every error the service answers with, in one table: the kind (an exception type, with its reason code
where it has one) → one HTTP status and one `code`. Bodies are `{"error": {"code", "message"}}`; the status is
never chosen from a message's text. docs/SERVING.md prints this table (`table_rows`)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from qkcopy.data import images
from qkcopy.data.images import ImageError
from qkcopy.serve.auth import Forbidden, Unauthorized
from qkcopy.serve.batcher import NotRunning, Overloaded
from qkcopy.serve.service import NotFound, Timeout, TooLarge

log = logging.getLogger(__name__)
METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")

# kind: (status, code, what the message says). ImageError is keyed by its reason code, the framework's
# HTTPException by the status it carries (a malformed body, an unknown route, a method the route lacks).
TABLE: dict[type | tuple[type, object], tuple[int, str, str]] = {
    ValueError: (400, "bad_request", "the field and what it must be (bank name, metadata JSON, …)"),
    (HTTPException, 400): (400, "http_error", "the body could not be parsed (malformed multipart)"),
    Unauthorized: (401, "unauthorized", "no key, or an invalid one (WWW-Authenticate: Bearer)"),
    Forbidden: (403, "forbidden", "the key's name and the scope it lacks"),
    NotFound: (404, "not_found", "no reference with that id"),
    (HTTPException, 404): (404, "http_error", "no such route"),
    (HTTPException, 405): (405, "http_error", "method not allowed (Allow: the route's methods)"),
    TooLarge: (413, "too_large", "which body, field or count, and its limit"),
    (ImageError, images.TOO_MANY_PIXELS): (413, "too_large", "WxH pixels is over the limit of --max-pixels"),
    (ImageError, images.BOMB): (413, "too_large", "decompression bomb refused, too many pixels"),
    (ImageError, images.EMPTY): (415, "not_an_image", "empty file (0 bytes)"),
    (ImageError, images.UNIDENTIFIED): (415, "not_an_image", "not an image PIL can identify"),
    (ImageError, images.FORMAT): (415, "not_an_image", "image format X is not accepted (accepted: …)"),
    (ImageError, images.CORRUPT): (422, "bad_image", "cannot decode (truncated or corrupt)"),
    (ImageError, images.MISSING): (422, "bad_image", "no such file"),
    RequestValidationError: (422, "invalid_request", "each field missing or out of range, by name"),
    Overloaded: (429, "overloaded", "the model's queue is full (Retry-After)"),
    NotRunning: (503, "unavailable", "the model worker is not running (Retry-After)"),
    Timeout: (503, "timeout", "the model did not answer in --timeout s (Retry-After)"),
    Exception: (500, "internal", "a bug: the server's log has the traceback"),
}


def kind_of(err: Exception) -> tuple[int, str, str]:
    """The table's row for `err`: its exact kind, else the nearest base class listed."""
    key = ((ImageError, err.code) if isinstance(err, ImageError)
           else (HTTPException, err.status_code) if isinstance(err, HTTPException) else None)
    if key in TABLE:
        return TABLE[key]
    if isinstance(err, HTTPException):  # any other status the framework raises keeps that status
        return err.status_code, "http_error", "as the framework says"
    return next(TABLE[c] for c in type(err).__mro__ if c in TABLE)


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers)


def _message(err: Exception) -> str:
    if isinstance(err, RequestValidationError):
        return "; ".join(f"{'.'.join(str(x) for x in e['loc'] if x != 'body')}: {e['msg']}" for e in err.errors())
    if isinstance(err, HTTPException):
        return str(err.detail)
    return str(err)


def allowed_methods(request: Request) -> str:
    """Every method some route of this path answers (Starlette's own Allow names only the first route's)."""
    routes = request.app.router.routes
    return ", ".join(m for m in METHODS if any(r.matches({**request.scope, "method": m})[0] == Match.FULL
                                               for r in routes))


def response_for(err: Exception, headers: dict | None = None) -> JSONResponse:
    """The error response of `err`, by the table (the guards in front of the app use it too)."""
    status, code, _ = kind_of(err)
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status in (429, 503):
        headers["Retry-After"] = str(getattr(err, "retry_after", 1))
    message = "internal error; the server's log has the details" if code == "internal" else _message(err)
    return error_response(status, code, message, headers)


def handle(request: Request, err: Exception) -> JSONResponse:
    headers = dict(getattr(err, "headers", None) or {})
    if isinstance(err, HTTPException) and err.status_code == 405:  # RFC 9110: say which methods there are
        headers["Allow"] = allowed_methods(request)
    if kind_of(err)[1] == "internal":
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
    return response_for(err, headers)


def install(app: FastAPI) -> None:
    for kind in {k[0] if isinstance(k, tuple) else k for k in TABLE}:
        app.add_exception_handler(kind, handle)


def table_rows() -> list[tuple[str, int, str, str]]:
    """(kind, status, code, message) for each row of TABLE, in its order (for the docs)."""
    def name(k):
        return f"{k[0].__name__}({k[1]})" if isinstance(k, tuple) else k.__name__
    return [(name(k), *v) for k, v in TABLE.items()]
