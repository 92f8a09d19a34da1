"""Bulk ingestion: `qkcopy embed` output (reference side) into a collection, no image described twice.

`import_descriptors` reads each descriptor file (`PREFIX.h5` or `PREFIX.npy` with the `PREFIX.meta.json`
that `qkcopy embed` writes beside it, plain or under torchrun) through `read_descriptors`, which refuses
another model's descriptors, query-side (Q) descriptors and files with no metadata. Rows go in by chunks of
`chunk`, each one committed transaction, so an interrupted import keeps what it did and a rerun skips it:

- a reference's name is its image id (the file stem `qkcopy embed` recorded);
- its `sha256` is the SHA-256 of (id, descriptor bytes) — the file bytes are not in an embed output — so
  importing the same output again into the same bank recognises every row as present (the exact re-add rule
  of the collection, applied to descriptors);
- no thumbnail is stored (the review page shows the name only).

The faiss index is built once at the end (`reindex` to the pinned type, or the one `index` names, then a
snapshot), not replayed row by row; on Milvus each chunk is written through as it commits and the end is one
flush. `.npy` files are memory-mapped and read chunk by chunk, so a 10M-row import never holds them whole.

Letters: N rows of one file, E descriptor dim.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from qkcopy.collection.collection import Collection, check_bank
from qkcopy.collection.records import NewRef
from qkcopy.retrieval.embed_shards import read_descriptors
from qkcopy.retrieval.faiss_index import check_index_params

log = logging.getLogger(__name__)

CHUNK = 10_000


@dataclass(frozen=True)
class Imported:
    added: int
    present: int  # rows already in the bank (a resumed or repeated import)
    files: int


def descriptor_key(image_id: str, vector) -> str:
    """The content key an imported reference is recognised by: SHA-256 of its id and its float32 descriptor."""
    return hashlib.sha256(image_id.encode() + b"\0" + vector.tobytes()).hexdigest()


def import_descriptors(collection: Collection, files: Sequence[str | Path], bank: str = "default",
                       meta: dict | None = None, chunk: int = CHUNK, index: dict | None = None) -> Imported:
    """Import reference descriptors of `files` into `bank`; returns what was added and what was present.

    `index`: the faiss index to build at the end, {"kind": "flat" | "ivf" | "ivfpq", and optionally nlist,
    nprobe, m, rerank} (`Collection.reindex`); default: the collection's type and parameters.

    Raises:
        ValueError: an index request `check_index_params` refuses, before anything is written; one the Milvus
        engine cannot build, after the rows are in (they stay, with the index they had).
        FingerprintMismatch: a file was embedded by another model. DescriptorError: no metadata, damaged, or
        query-side descriptors. FileNotFoundError: a file is missing. All before anything is written.
    """
    check_bank(bank)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if index is not None:  # checked before the rows go in: the index is built after them
        check_index_params(index.get("kind"), collection.dim,
                           **{k: index.get(k) for k in ("nlist", "nprobe", "m", "rerank")})
    loaded = [(Path(f), *read_descriptors(f, collection.fingerprint, "reference", collection.dim, mmap=True))
              for f in files]
    for f, _, vectors in loaded:
        if vectors.shape[1] != collection.dim:
            raise ValueError(f"{f}: descriptors are {vectors.shape[1]}-d, the collection's are {collection.dim}-d")
    added = present = 0
    total = sum(len(ids) for _, ids, _ in loaded)
    with tqdm(total=total, desc="importing references", unit="ref", leave=False) as bar:
        for f, ids, vectors in loaded:
            for s in range(0, len(ids), chunk):
                refs = [NewRef(i, descriptor_key(i, v), bank, dict(meta or {}), v)
                        for i, v in zip(ids[s:s + chunk], vectors[s:s + chunk])]
                result = collection.add(refs)  # one transaction: acknowledged, kept if the import dies later
                n = sum(not a.existing for a in result)
                added, present = added + n, present + len(result) - n
                bar.update(len(refs))
            log.info("imported %s: %d rows", f, len(ids))
    if collection.milvus:
        collection.snapshot()  # one flush; the log is cut there
        if index is not None:  # Milvus builds it over the rows it now holds
            collection.reindex(index["kind"], **{k: index.get(k) for k in ("nlist", "nprobe", "m", "rerank")})
    else:
        build = index or dict(kind=collection.kind, **collection.params)
        collection.reindex(build["kind"], **{k: build.get(k) for k in ("nlist", "nprobe", "m", "rerank")})
    return Imported(added, present, len(loaded))
