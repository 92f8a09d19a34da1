"""POST /v1/match: is each uploaded image a copy of a reference? Top-k matches with scores, verdicts and the
query region each match was found in (`regions`: how many regions beside the whole image; service.py), the top
`verify` re-scored by local features (serve/verification.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from qkcopy.evaluation.threshold import any_copy
from qkcopy.serve import schemas
from qkcopy.serve.deps import file_part, need, read_uploads, service, wait
from qkcopy.serve.region_matches import MAX_REGIONS
from qkcopy.serve.schemas import BANK_PATTERN, BANK_SCHEMA, errors
from qkcopy.serve.service import MatchService, TooLarge
from qkcopy.serve.verification import MAX_VERIFY

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
                verify: int = Form(None, ge=0, le=MAX_VERIFY,
                                   description="the best `verify` matches of each image re-scored by local features "
                                   "(SIFT + RANSAC; score + 1.0 × confidence), each with its `confidence` and "
                                   "`quad` (absent: the server's --verify; the server needs --references). "
                                   "About 20 ms a verified match on one CPU thread"),
                svc: MatchService = Depends(service)):
    if len(images) > svc.limits.max_images:
        raise TooLarge(f"{len(images)} images in one request; the limit is {svc.limits.max_images}")
    verify = svc.verify if verify is None else verify
    uploads = await read_uploads(svc, images, svc.regions if regions is None else regions, verify)
    futures = []
    try:
        for u in uploads:
            futures.append(svc.submit_match(u, k, bank or None))
    except Exception:
        for f in futures:
            f.cancel()
        raise
    found = await wait(svc, futures)
    if verify:
        found = await run_in_threadpool(svc.verified, uploads, found, verify)
    svc.remember(uploads, found)
    t = svc.collection.threshold_score
    return schemas.MatchResponse(
        model=svc.collection.fingerprint, threshold=t,
        results=[schemas.ImageResult(image=u.name, is_copy=any_copy([m.score for m in ms], t),
                                     matches=[schemas.MatchedRef(**vars(m)) for m in ms])
                 for u, ms in zip(uploads, found)])
