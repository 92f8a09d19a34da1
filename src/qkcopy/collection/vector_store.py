"""The vector-store seam of the collection: where the references' vectors are searched.

Two implementations behind one interface (`VectorIndex`), chosen when the collection is created and pinned
in its settings (`store`):

- "faiss" (the default, embedded): an in-process faiss index, a cache of the database snapshotted to
  `cache/` (cache.py: `IndexCache`);
- "milvus-lite" (Milvus's embedded edition in-process, from `COLLECTION/milvus.db`) or "milvus://host:19530"
  (a Milvus cluster): milvus.py, `MilvusIndex`. The same code serves both; only the URI differs.

Either way SQLite (store.py) keeps what the service must change atomically with a reference: names, hashes
(exact re-add recognition), metadata, thumbnails, the change log, settings and API keys; the vector store is
kept up with that change log, inside each write before it is acknowledged.

Letters: Nq queries, E descriptor dim, k neighbours.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Protocol

import numpy as np

from qkcopy.collection.store import Store

STORES = ("faiss", "milvus-lite", "milvus://HOST:PORT")
LITE_FILE = "milvus.db"


class VectorIndex(Protocol):
    """What the collection needs of a vector store (IndexCache and MilvusIndex implement it)."""

    kind: str
    params: dict
    seq: int  # the last change of the database log it holds

    def catch_up(self, store: Store) -> int: ...
    def search(self, vectors: np.ndarray, k: int, bank: str | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]: ...
    def ids(self) -> np.ndarray: ...
    def snapshot(self, directory: Path, fingerprint: str) -> int: ...
    def __len__(self) -> int: ...


def check_store(spec: str) -> str:
    """A `--store` value, checked: "faiss", "milvus-lite" or "milvus://host:port"."""
    if spec in ("faiss", "milvus-lite") or re.fullmatch(r"milvus://[A-Za-z0-9.\-]+:\d{1,5}", spec or ""):
        return spec
    raise ValueError(f"--store must be one of {', '.join(STORES)}, got {spec!r}")


def is_milvus(spec: str) -> bool:
    return spec != "faiss"


def milvus_uri(spec: str, root: Path) -> str:
    """The pymilvus URI of a store spec: the collection's milvus-lite file, or http://host:port."""
    return str((root / LITE_FILE).resolve()) if spec == "milvus-lite" else "http://" + spec[len("milvus://"):]


def new_milvus_name() -> str:
    """A Milvus collection name of its own, so several qkcopy collections can share one cluster."""
    return "qkcopy_" + uuid.uuid4().hex[:16]
