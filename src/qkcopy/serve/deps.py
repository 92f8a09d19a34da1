"""What the route handlers are given (FastAPI dependencies): the service, the key check, uploads read, waiting.

`create_app` puts the service and the key ring on `app.state`; handlers reach them through `service(request)`
and `need(scope)`, so tests build the app around a temporary collection and nothing here is global."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

from fastapi import Depends, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from qkcopy.serve.auth import Principal
from qkcopy.serve.service import MatchService, Timeout, Upload

MAX_NAME = 200
IMAGE_TYPES = "image/jpeg, image/png, image/webp, image/gif, image/bmp, image/tiff"  # sniffed, not trusted


def file_part(field: str) -> dict:
    """OpenAPI multipart `encoding` of a file field: image types, and a filename in Content-Disposition (a part
    without one is a text field to the multipart parser, and is refused with 422)."""
    disposition = f'form-data; name="{field}"; filename="image.jpg"'
    return {field: {"contentType": IMAGE_TYPES, "headers": {"Content-Disposition": {
        "description": "must carry a filename", "schema": {"type": "string"}, "example": disposition}}}}


def service(request: Request) -> MatchService:
    return request.app.state.service


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def need(scope: str):
    """A dependency that lets the request through when its key has `scope` (Unauthorized / Forbidden)."""
    def check(request: Request) -> Principal:
        return request.app.state.keys.check(_token(request), scope)
    return Depends(check)


async def wait(svc: MatchService, futures: list[Future]) -> list:
    """The futures' results, or Timeout (all cancelled) after the service's timeout."""
    try:
        return await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)),
                                      svc.limits.timeout_s)
    except TimeoutError:
        for f in futures:
            f.cancel()
        raise Timeout(f"the model did not answer within {svc.limits.timeout_s:g} s") from None


async def read_uploads(svc: MatchService, files: list[UploadFile], regions: int = 0,
                       verify: int = 0) -> list[Upload]:
    """Read and decode uploaded files (with `regions` proposed regions each, and local features when `verify`)
    on worker threads, never on the event loop."""
    named = [((f.filename or f"image{i}")[:MAX_NAME], await f.read()) for i, f in enumerate(files)]
    return await run_in_threadpool(lambda: [svc.prepare(data, name, regions, verify) for name, data in named])
