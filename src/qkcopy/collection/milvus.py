"""The collection's vectors in Milvus: the second implementation of the vector-store seam (see vector_store.py).

One Milvus collection per qkcopy collection holds each reference as (id = `refs.id`, bank, vector = the E-d K
descriptor). `bank` is Milvus's partition key, so a lookup within a bank is a filtered search that Milvus
routes to that bank's partition and evaluates exactly (`bank == {b}` before the k-nearest selection), never a
post-filter of a global top-k. The Milvus index is FLAT under L2 by default, so its distances are the squared
L2 that the faiss store returns and the two stores rank alike; `reindex` switches it to Milvus's own IVF_FLAT
("ivf") or IVF_PQ ("ivfpq", Milvus servers; milvus-lite refuses it), built by Milvus, searched with `nprobe`.

Milvus is kept up with the SQLite change log exactly as the faiss cache is: `catch_up` applies the changes
after `seq` as upserts and deletes (both idempotent, so replaying a change twice is harmless). The collection
calls it inside every add and remove, so an acknowledged write is in Milvus before the reply; `snapshot`
flushes Milvus (sealed segments on disk) and the collection then records that seq (`milvus_seq`) and cuts the
change log there. A process that starts replays from `milvus_seq`: whatever Milvus may have lost after its
last flush comes back from the database.

`uri` is a local file (milvus-lite: Milvus's embedded edition, in-process — in its 3.x releases a Python engine
with faiss indexes behind the same gRPC API, not the C++ server) or `http://host:19530` (a Milvus server or
cluster); qkcopy's code is the same for both.

Letters: N references, Nq queries, E descriptor dim, k neighbours.
"""

from __future__ import annotations

import json
import logging
import threading

import numpy as np

from qkcopy.collection.records import Change, net_changes
from qkcopy.collection.store import Store

log = logging.getLogger(__name__)

UPSERT_BATCH = 5_000
ID_PAGE = 10_000
MILVUS_TYPES = {"flat": "FLAT", "ivf": "IVF_FLAT", "ivfpq": "IVF_PQ"}  # the collection's index types in Milvus


def milvus_index_params(kind: str, params: dict) -> tuple[str, dict]:
    """(Milvus index type, its build parameters) for a collection index type and its parameters."""
    build = {} if kind == "flat" else dict(nlist=int(params["nlist"]))
    if kind == "ivfpq":
        build.update(m=int(params.get("m") or 32), nbits=8)
    return MILVUS_TYPES[kind], build


def connect(uri: str):
    """A MilvusClient for `uri` (a milvus-lite file or http://host:port)."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise ValueError("this collection keeps its vectors in Milvus, but pymilvus is not installed; "
                         "install qkcopy with the milvus extra (pip install 'qkcopy[milvus]')") from None
    try:
        return MilvusClient(uri)
    except Exception as err:  # pymilvus raises its own types, and milvus-lite a lock error, all with a message
        raise ValueError(f"cannot open Milvus at {uri} ({type(err).__name__}: {err}); milvus-lite lets one process "
                         "at a time open a collection's milvus.db, so stop the other one (a `qkcopy serve`?), or "
                         "use a Milvus server (--store milvus://host:19530) to share it") from None


class MilvusIndex:
    """The collection's vectors in one Milvus collection, as of change `seq` of the database. Thread-safe."""

    def __init__(self, client, name: str, dim: int, seq: int, uri: str = "", kind: str = "flat",
                 params: dict | None = None) -> None:
        self.client, self.name, self._dim, self.seq, self.uri = client, name, dim, seq, uri
        self.kind, self.params = kind, dict(params or {})
        self.lock = threading.RLock()

    @property
    def dim(self) -> int:
        return self._dim

    # --- opening and building ---

    @classmethod
    def open(cls, store: Store, uri: str, name: str, dim: int, kind: str = "flat",
             params: dict | None = None) -> MilvusIndex:
        """Connect, create the Milvus collection when absent (then load every row), and catch up."""
        client = connect(uri)
        settings = store.settings()
        if client.has_collection(name):
            index = cls(client, name, dim, int(settings.get("milvus_seq", 0)), uri, kind, params)
            client.load_collection(name)
        else:  # rows change meanwhile: catch_up reconciles
            index = cls(client, name, dim, store.last_seq(), uri, kind, params)
            index._create()
            for ids, banks, vectors in store.vectors(dim):
                index._upsert(ids, banks, vectors)
            log.info("Milvus collection %s built from the database: %d references", name, len(index))
        n = index.catch_up(store)
        log.info("Milvus collection %s at %s: %d changes replayed (now at change %d)", name, uri, n, index.seq)
        return index

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("bank", DataType.VARCHAR, max_length=256, is_partition_key=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self._dim)
        self.client.create_collection(self.name, schema=schema, index_params=self._index_params(),
                                      consistency_level="Strong")

    def _index_params(self):
        index_type, build = milvus_index_params(self.kind, self.params)
        params = self.client.prepare_index_params()
        params.add_index(field_name="vector", index_type=index_type, metric_type="L2", params=build)
        return params

    def reindex(self, kind: str, params: dict) -> None:
        """Rebuild the vector index inside Milvus as `kind` ("flat", "ivf", "ivfpq"; trained by Milvus on
        the rows it holds). The rows stay; the engine's refusal (milvus-lite has no IVF_PQ) is a ValueError and
        leaves the index it had."""
        from pymilvus.exceptions import MilvusException

        if kind == "ivfpq" and self.lite:  # it would accept the spec and fail at each search
            raise ValueError(f"milvus-lite at {self.uri} cannot build a IVF_PQ index (it builds FLAT, IVF_FLAT, "
                             f"IVF_SQ8, HNSW); use --type ivf, or a Milvus server; the index stays "
                             f"{MILVUS_TYPES[self.kind]}")
        with self.lock:
            old = (self.kind, self.params)
            self.kind, self.params = kind, dict(params)
            try:
                self._rebuild_index()
            except MilvusException as err:
                self.kind, self.params = old
                self._rebuild_index()
                raise ValueError(f"Milvus at {self.uri} cannot build a {MILVUS_TYPES[kind]} index "
                                 f"({err.message}); the index stays {MILVUS_TYPES[old[0]]}") from None

    def _rebuild_index(self) -> None:
        self.client.release_collection(self.name)
        if "vector" in self.client.list_indexes(self.name):
            self.client.drop_index(self.name, "vector")
        self.client.create_index(self.name, self._index_params())
        self.client.load_collection(self.name)
        self.search(np.zeros((1, self._dim), np.float32), 1)  # engines may build lazily: fail here, not later

    @property
    def lite(self) -> bool:
        return not self.uri.startswith(("http://", "https://"))

    def close(self) -> None:
        """Close the client; milvus-lite's in-process server too, which holds its folder's lock until then."""
        self.client.close()
        if self.lite:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    # --- keeping up with the database ---

    def catch_up(self, store: Store) -> int:
        """Apply the database's changes after `seq`; returns how many were applied."""
        with self.lock:
            if store.last_seq() == self.seq:
                return 0
            settings = store.settings()
            floor = int(settings.get("log_floor", 0))
            if self.seq < floor:  # the log was cut by a snapshot, which flushed Milvus up to milvus_seq first
                self.seq = max(self.seq, int(settings.get("milvus_seq", 0)))
            changes = store.changes_after(self.seq)
            if changes:
                self._apply(changes, store)
            return len(changes)

    def _apply(self, changes: list[Change], store: Store) -> None:
        removed, added = net_changes(changes)
        if removed:
            self.client.delete(self.name, ids=removed)
        for ids, banks, vectors in store.vectors(self._dim, added):  # rows removed meanwhile are absent
            self._upsert(ids, banks, vectors)
        self.seq = changes[-1].seq

    def _upsert(self, ids: np.ndarray, banks: list[str], vectors: np.ndarray) -> None:
        for s in range(0, len(ids), UPSERT_BATCH):
            rows = [dict(id=int(i), bank=b, vector=v) for i, b, v in
                    zip(ids[s:s + UPSERT_BATCH].tolist(), banks[s:s + UPSERT_BATCH], vectors[s:s + UPSERT_BATCH])]
            self.client.upsert(self.name, rows)

    def snapshot(self, directory=None, fingerprint: str | None = None) -> int:
        """Flush Milvus (its segments durable on its own storage); returns the change seq it now holds."""
        with self.lock:
            self.client.flush(self.name)
            return self.seq

    # --- searching ---

    def search(self, vectors: np.ndarray, k: int, bank: str | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest references: sqdist (Nq, k) float32 ascending, ids (Nq, k) int64 (−1 pads)."""
        if vectors.ndim != 2 or vectors.shape[1] != self._dim or vectors.dtype != np.float32:
            raise ValueError(f"query descriptors must be float32 (Nq, {self._dim}), got {vectors.shape} {vectors.dtype}")
        sqdist = np.full((len(vectors), k), np.inf, np.float32)  # (Nq, k)
        ids = np.full((len(vectors), k), -1, np.int64)  # (Nq, k)
        if not len(vectors):
            return sqdist, ids
        # a string literal, quotes and backslashes escaped (filter templates are not in every Milvus)
        where = dict(filter="bank == " + json.dumps(bank, ensure_ascii=False)) if bank is not None else {}
        if self.kind != "flat":
            probe = min(int(nprobe or self.params.get("nprobe", 16)), int(self.params["nlist"]))
            where["search_params"] = dict(params=dict(nprobe=probe))
        with self.lock:
            hits = self.client.search(self.name, data=list(vectors), limit=k, output_fields=["id"], **where)
        for row, found in enumerate(hits):
            for col, hit in enumerate(found):
                ids[row, col], sqdist[row, col] = hit["id"], max(float(hit["distance"]), 0.0)
        return sqdist, ids

    def ids(self) -> np.ndarray:
        """The ids Milvus holds, sorted."""
        with self.lock:
            it = self.client.query_iterator(self.name, batch_size=ID_PAGE, filter="", output_fields=["id"])
            out: list[int] = []
            try:
                while page := it.next():
                    out += [r["id"] for r in page]
            finally:
                it.close()
        return np.sort(np.array(out, np.int64))

    def __len__(self) -> int:
        with self.lock:
            return int(self.client.query(self.name, filter="", output_fields=["count(*)"])[0]["count(*)"])
