"""POST /v1/match: is each uploaded image a copy of a reference? Top-k matches with scores, verdicts and the
query region each match was found in (`regions`: how many regions beside the whole image; service.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile

from qkcopy.evaluation.threshold import any_copy
from qkcopy.serve import schemas
from qkcopy.serve.deps import file_part, need, read_uploads, service, wait
from qkcopy.serve.schemas import BANK_PATTERN, BANK_SCHEMA, errors
from qkcopy.serve.service import MAX_REGIONS, MatchService, TooLarge

router = APIRouter()


@router.post("/v1/match", operation_id="match", response_model=schemas.MatchResponse, dependencies=[need("read")],
             summary="Is each uploaded image a copy of a reference? Top-k matches with scores and verdicts.",
             responses=errors(400, 401, 403, 413, 415, 422, 429, 503),
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {
                 "encoding": file_part("images")}}}})
async def match(images: list[UploadFile] = File(..., description="one or more image files (the server's limit: "
                                                "--max-images, 16 by default; more is 413)"),
                k: int = Form(10, ge=1, le=100, description="matches per image"),
                bank: str = Form("", max_length=64, pattern=BANK_PATTERN, json_schema_extra=BANK_SCHEMA,
                                 description="search this bank only (empty: every bank)"),
                regions: int = Form(None, ge=0, le=MAX_REGIONS,
                                    description="query regions described beside the whole image, each searched; a "
                                    "reference's score is its best over them (absent: the server's --regions). "
                                    "Costs 1 + regions descriptors per image"),
                svc: MatchService = Depends(service)):
    if len(images) > svc.limits.max_images:
        raise TooLarge(f"{len(images)} images in one request; the limit is {svc.limits.max_images}")
    uploads = await read_uploads(svc, images, svc.regions if regions is None else regions)
    futures = []
    try:
        for u in uploads:
            futures.append(svc.submit_match(u, k, bank or None))
    except Exception:
        for f in futures:
            f.cancel()
        raise
    found = await wait(svc, futures)
    svc.remember(uploads, found)
    t = svc.collection.threshold_score
    return schemas.MatchResponse(
        model=svc.collection.fingerprint, threshold=t,
        results=[schemas.ImageResult(image=u.name, is_copy=any_copy([m.score for m in ms], t),
                                     matches=[schemas.MatchedRef(**vars(m)) for m in ms])
                 for u, ms in zip(uploads, found)])
