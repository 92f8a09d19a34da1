"""Request and response bodies of the HTTP API (pydantic), the OpenAPI docs' source of truth."""

from __future__ import annotations

from pydantic import BaseModel, Field

MAX_ID = 2 ** 63 - 1  # reference ids: SQLite INTEGER and faiss idx_t are signed 64-bit; ids start at 1


# Bank names: no control characters (the pattern), and printable as `str.isprintable` says (format "printable",
# the collection's rule, which no short regex states exactly: the contract fuzz registers it as a strategy).
BANK_PATTERN = r"^[^\u0000-\u001F\u007F-\u009F]*$"
BANK_SCHEMA = {"format": "printable"}


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable kind, e.g. bad_image, unauthorized, overloaded")
    message: str = Field(description="what was wrong, naming the field or file")


class Error(BaseModel):
    error: ErrorBody


def errors(*statuses: int) -> dict:
    """OpenAPI `responses` for these error statuses, each with the error model (Retry-After on 429/503)."""
    retry = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}
    return {s: {"model": Error, **({"headers": retry} if s in (429, 503) else {})} for s in statuses}


class MatchedRef(BaseModel):
    id: int = Field(description="reference id")
    name: str
    bank: str
    metadata: dict
    score: float = Field(description="−squared L2 between query (Q) and reference (K) descriptors; higher = closer")
    is_copy: bool | None = Field(description="score ≥ the collection's calibrated threshold (null: no threshold)")
    box: list[int] = Field(min_length=4, max_length=4,
                           description="the query region this score is of: [x0, y0, x1, y1] in the query's pixels "
                           "(x1, y1 exclusive); the whole image [0, 0, width, height] when no region scored higher "
                           "or regions are off; a verified match's: the bounding box of its `quad`")
    confidence: float | None = Field(None, description="local-feature verification's confidence 0..1, when this "
                                     "match was verified (`verify`); its score then includes + 1.0 × confidence")
    quad: list[list[float]] | None = Field(None, description="a verified reference's outline in the query: its 4 "
                                           "corners [[x, y], …] (top-left, top-right, bottom-right, bottom-left of "
                                           "the reference) in the query's pixels; null when not verified")


class ImageResult(BaseModel):
    image: str = Field(description="the uploaded file's name")
    is_copy: bool | None = Field(description="any match is a copy (null: no threshold)")
    matches: list[MatchedRef]


class MatchResponse(BaseModel):
    model: str = Field(description="fingerprint of the model that described the images")
    threshold: float | None
    results: list[ImageResult]


class Reference(BaseModel):
    id: int
    name: str
    sha256: str
    bank: str
    metadata: dict
    added_at: float


class Added(BaseModel):
    id: int
    existing: bool = Field(description="true: these exact bytes were already in this bank; nothing was added")


class Stats(BaseModel):
    references: int
    banks: dict[str, int]
    model: str
    dim: int
    index: str
    index_params: dict
    threshold: float | None
    indexed: int | None = None
    queue_depth: int


class Recent(BaseModel):
    at: float
    name: str
    thumbnail: str = Field(description="data: URL of the query's thumbnail")
    is_copy: bool | None
    matches: list[MatchedRef]


class Health(BaseModel):
    status: str
