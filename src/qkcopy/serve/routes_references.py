"""The references: add (described with K), look up, thumbnail, delete, list (keyset-paginated by id)."""

from __future__ import annotations

import json
import math

from fastapi import APIRouter, Depends, File, Form, Path, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from qkcopy.serve import schemas
from qkcopy.serve.deps import MAX_NAME, file_part, need, read_uploads, service, wait
from qkcopy.serve.schemas import BANK_PATTERN, BANK_SCHEMA, MAX_ID, errors
from qkcopy.serve.service import MatchService, NotFound, TooLarge

MAX_METADATA_BYTES = 8192
RefId = Path(ge=1, le=MAX_ID, description="reference id (1 … 2^63−1)")
LINK = {"operationId": "get_reference", "parameters": {"ref_id": "$response.body#/id"}}
ADDED_LINKS = {"links": {"GetReference": LINK, "GetThumbnail": {**LINK, "operationId": "get_thumbnail"},
                         "DeleteReference": {**LINK, "operationId": "delete_reference"}}}

router = APIRouter()


def _no_constant(name: str):
    raise ValueError(f"metadata: {name} is not JSON (RFC 8259 has no NaN or Infinity)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"metadata: the number {text[:40]} is out of the range of a 64-bit float")
    return value


def parse_metadata(metadata: str) -> dict:
    """The `metadata` form field: a JSON object of at most MAX_METADATA_BYTES bytes, finite numbers only."""
    if len(metadata.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        raise TooLarge(f"metadata: over {MAX_METADATA_BYTES} bytes")
    try:
        meta = json.loads(metadata, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as err:
        raise ValueError(f"metadata: not valid JSON ({err})") from None
    except RecursionError:
        raise ValueError("metadata: nested too deeply") from None
    if not isinstance(meta, dict):
        raise ValueError(f"metadata: must be a JSON object, got {type(meta).__name__}")
    return meta


@router.post("/v1/references", operation_id="add_reference", response_model=schemas.Added, status_code=201,
             dependencies=[need("write")],
             summary="Add a reference image (described with K); the same bytes in the same bank are not added twice.",
             responses={200: {"model": schemas.Added, "description": "already there", **ADDED_LINKS},
                        201: ADDED_LINKS, **errors(400, 401, 403, 413, 415, 422, 429, 503)},
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {
                 "encoding": {**file_part("image"), "metadata": {"contentType": "application/json"}}}}}})
async def add_reference(
        image: UploadFile = File(..., description="the image file (JPEG, PNG, WebP, GIF, BMP or TIFF)"),
        bank: str = Form("default", max_length=64, pattern=BANK_PATTERN, json_schema_extra=BANK_SCHEMA,
                         description="empty: `default`"),
        metadata: str = Form("{}", description="a JSON object, as a string (empty: {})", json_schema_extra={
            "contentMediaType": "application/json", "contentSchema": {"type": "object"}}),
        name: str = Form("", max_length=MAX_NAME, description="empty: the file's name"),
        svc: MatchService = Depends(service)):
    meta = parse_metadata(metadata)
    (upload,) = await read_uploads(svc, [image])
    (vector,) = await wait(svc, [svc.submit_describe(upload)])
    added = await run_in_threadpool(svc.add, upload, vector, bank, meta, name or None)
    body = schemas.Added(id=added.id, existing=added.existing)
    return JSONResponse(body.model_dump(), 200 if added.existing else 201)


@router.get("/v1/references/{ref_id}", operation_id="get_reference", response_model=schemas.Reference,
            dependencies=[need("read")],
            responses=errors(401, 403, 404, 422))
def get_reference(ref_id: int = RefId, svc: MatchService = Depends(service)):
    ref = svc.collection.get(ref_id)
    if ref is None:
        raise NotFound(f"no reference with id {ref_id}")
    return schemas.Reference(**ref.as_dict())


@router.get("/v1/references/{ref_id}/thumbnail", operation_id="get_thumbnail",
           dependencies=[need("read")], response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG, longest side 160 px"},
                       **errors(401, 403, 404, 422)})
def get_thumbnail(ref_id: int = RefId, svc: MatchService = Depends(service)):
    thumb = svc.collection.store.thumbnail(ref_id)
    if not thumb:
        raise NotFound(f"no thumbnail for reference {ref_id}")
    return Response(thumb, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.delete("/v1/references/{ref_id}", operation_id="delete_reference", status_code=204,
               dependencies=[need("write")],
               responses=errors(401, 403, 404, 422))
def delete_reference(ref_id: int = RefId, svc: MatchService = Depends(service)):
    if not svc.collection.remove([ref_id]):
        raise NotFound(f"no reference with id {ref_id}")
    return Response(status_code=204)


@router.get("/v1/references", operation_id="list_references", response_model=list[schemas.Reference],
            dependencies=[need("read")],
            responses=errors(400, 401, 403, 422))
def list_references(bank: str = Query("", max_length=64, pattern=BANK_PATTERN, json_schema_extra=BANK_SCHEMA,
                                      description="this bank only (empty: every bank)"),
                    after: int = Query(0, ge=0, le=MAX_ID, description="ids greater than this"),
                    limit: int = Query(100, ge=1, le=1000), svc: MatchService = Depends(service)):
    return [schemas.Reference(**r.as_dict()) for r in svc.collection.list(bank or None, after, limit)]
