"""The references: add (described with K), look up, thumbnail, delete, list (keyset-paginated by id)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from qkcopy.serve import schemas
from qkcopy.serve.deps import MAX_NAME, need, read_uploads, service, wait
from qkcopy.serve.service import MatchService, NotFound, UploadError

MAX_METADATA_BYTES = 8192

router = APIRouter()


def parse_metadata(metadata: str) -> dict:
    """The `metadata` form field: a JSON object of at most MAX_METADATA_BYTES bytes."""
    if len(metadata.encode()) > MAX_METADATA_BYTES:
        raise UploadError(413, f"metadata: over {MAX_METADATA_BYTES} bytes")
    try:
        meta = json.loads(metadata)
    except json.JSONDecodeError as err:
        raise ValueError(f"metadata: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"metadata: must be a JSON object, got {type(meta).__name__}")
    return meta


@router.post("/v1/references", response_model=schemas.Added, dependencies=[need("write")], status_code=201,
             summary="Add a reference image (described with K); the same bytes in the same bank are not added twice.")
async def add_reference(image: UploadFile = File(...), bank: str = Form("default", min_length=1, max_length=64),
                        metadata: str = Form("{}", description="a JSON object"),
                        name: str | None = Form(None, max_length=MAX_NAME), svc: MatchService = Depends(service)):
    meta = parse_metadata(metadata)
    (upload,) = await read_uploads(svc, [image])
    (vector,) = await wait(svc, [svc.submit_describe(upload)])
    added = await run_in_threadpool(svc.add, upload, vector, bank, meta, name)
    body = schemas.Added(id=added.id, existing=added.existing)
    return JSONResponse(body.model_dump(), 200 if added.existing else 201)


@router.get("/v1/references/{ref_id}", response_model=schemas.Reference, dependencies=[need("read")])
def get_reference(ref_id: int, svc: MatchService = Depends(service)):
    ref = svc.collection.get(ref_id)
    if ref is None:
        raise NotFound(f"no reference with id {ref_id}")
    return schemas.Reference(**ref.as_dict())


@router.get("/v1/references/{ref_id}/thumbnail", dependencies=[need("read")], response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
def get_thumbnail(ref_id: int, svc: MatchService = Depends(service)):
    thumb = svc.collection.store.thumbnail(ref_id)
    if not thumb:
        raise NotFound(f"no thumbnail for reference {ref_id}")
    return Response(thumb, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.delete("/v1/references/{ref_id}", status_code=204, dependencies=[need("write")])
def delete_reference(ref_id: int, svc: MatchService = Depends(service)):
    if not svc.collection.remove([ref_id]):
        raise NotFound(f"no reference with id {ref_id}")
    return Response(status_code=204)


@router.get("/v1/references", response_model=list[schemas.Reference], dependencies=[need("read")])
def list_references(bank: str | None = Query(None, min_length=1, max_length=64), after: int = Query(0, ge=0),
                    limit: int = Query(100, ge=1, le=1000), svc: MatchService = Depends(service)):
    return [schemas.Reference(**r.as_dict()) for r in svc.collection.list(bank, after, limit)]
