"""POST /v1/match: is each uploaded image a copy of a reference? Top-k matches with scores and verdicts."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile

from qkcopy.evaluation.threshold import any_copy
from qkcopy.serve import schemas
from qkcopy.serve.deps import need, read_uploads, service, wait
from qkcopy.serve.service import MatchService, UploadError

router = APIRouter()


@router.post("/v1/match", response_model=schemas.MatchResponse, dependencies=[need("read")],
             summary="Is each uploaded image a copy of a reference? Top-k matches with scores and verdicts.")
async def match(images: list[UploadFile] = File(..., description="one or more image files"),
                k: int = Form(10, ge=1, le=100), bank: str | None = Form(None, min_length=1, max_length=64),
                svc: MatchService = Depends(service)):
    if len(images) > svc.limits.max_images:
        raise UploadError(413, f"{len(images)} images in one request; the limit is {svc.limits.max_images}")
    uploads = await read_uploads(svc, images)
    futures = []
    try:
        for u in uploads:
            futures.append(svc.submit_match(u, k, bank))
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
                                     matches=[schemas.Match(**vars(m)) for m in ms])
                 for u, ms in zip(uploads, found)])
