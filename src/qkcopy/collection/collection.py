"""A persistent reference collection: create, open, add, remove, list, stats and match.

The folder holds the database (store.py, the truth) and the vector store (vector_store.py): a faiss index
snapshot (cache.py, a cache) or a Milvus collection (milvus.py). The model
that describes the references (its fingerprint, the run it was loaded from) and the copy threshold are pinned
when the collection is created: opening it with another model is refused, since descriptors of different
models are not comparable. References are described with K; queries with Q (see describe.py).

Every change goes to the database first (one transaction, acknowledged when it commits), then reaches the
in-memory index by replaying the change log, the same path a restart takes; so index and database agree
after any crash, and several processes (a server and `qkcopy collection add`) can share one collection.

Letters: Nq queries, E descriptor dim, k neighbours.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qkcopy.collection.cache import IndexCache, StaleCache
from qkcopy.collection.records import AddedRef, NewRef, Ref
from qkcopy.collection.store import DB_NAME, Store
from qkcopy.collection.vector_store import VectorIndex, check_store, is_milvus, milvus_uri, new_milvus_name
from qkcopy.errors import FingerprintMismatch
from qkcopy.evaluation.threshold import (Threshold, is_copy, threshold_from_json, threshold_score,
                                         threshold_to_json)
from qkcopy.retrieval.faiss_index import RERANK, check_index_params, default_nlist, rerank_exact

log = logging.getLogger(__name__)

FORMAT = "qkcopy-collection/1"
CACHE_DIR = "cache"
DEFAULT_BANK = "default"
MAX_K = 100


@dataclass(frozen=True)
class MatchRow:
    id: int
    name: str
    bank: str
    metadata: dict
    score: float  # −squared L2 between the query's Q descriptor and the reference's K descriptor
    is_copy: bool | None  # None when the collection has no threshold


def check_bank(bank: str) -> str:
    if not isinstance(bank, str) or not 1 <= len(bank) <= 64 or not bank.isprintable():
        raise ValueError(f"bank name must be 1–64 printable characters, got {bank!r}")
    return bank


class Collection:
    def __init__(self, root: Path, store: Store) -> None:
        self.root, self.store = root, store
        s = store.settings()
        if s.get("format") != FORMAT:
            raise ValueError(f"{root} is not a qkcopy collection (format {s.get('format')!r})")
        self.fingerprint: str = s["fingerprint"]
        self.dim: int = int(s["dim"])
        self.model_path: str | None = s.get("model")
        stored = s.get("threshold")
        self.threshold: Threshold | float | None = None if stored is None else threshold_from_json(stored, root)
        self.kind: str = s.get("index", "flat")
        self.params: dict = s.get("index_params", {})
        self.store_spec: str = s.get("store", "faiss")
        self.milvus_name: str | None = s.get("milvus_collection")
        self._cache: VectorIndex | None = None
        self._cache_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()

    # --- lifecycle ---

    @classmethod
    def create(cls, root: str | Path, fingerprint: str, dim: int, model: str | Path | None = None,
               threshold: Threshold | float | None = None, vectors: str = "faiss") -> Collection:
        """A new collection in `root`; `vectors`: where they live, "faiss", "milvus-lite" or "milvus://host:port"."""
        root = Path(root)
        check_store(vectors)
        if (root / DB_NAME).exists():
            raise FileExistsError(f"{root} already holds a collection; add to it with `qkcopy collection add`")
        if isinstance(threshold, Threshold):
            threshold.check_model(fingerprint)
        pinned = None if threshold is None else threshold_to_json(threshold)  # a user's number: checked here
        root.mkdir(parents=True, exist_ok=True)
        store = Store(root / DB_NAME, create=True)
        store.set_settings(dict(format=FORMAT, fingerprint=fingerprint, dim=int(dim), threshold=pinned,
                                model=str(Path(model).resolve()) if model else None, index="flat", index_params={},
                                store=vectors, milvus_collection=new_milvus_name() if is_milvus(vectors) else None))
        log.info("created collection %s for model %s", root, fingerprint)
        return cls(root, store)

    @classmethod
    def open(cls, root: str | Path, fingerprint: str | None = None) -> Collection:
        """Open the collection in `root`; with `fingerprint`, refuse a model other than the pinned one."""
        root = Path(root)
        if not (root / DB_NAME).is_file():
            raise FileNotFoundError(f"{root} is not a qkcopy collection (no {DB_NAME}); create one with "
                                    "`qkcopy collection create`")
        coll = cls(root, Store(root / DB_NAME))
        if fingerprint is not None and fingerprint != coll.fingerprint:
            coll.close()
            raise FingerprintMismatch(
                f"{root} holds references described by model {coll.fingerprint}, but the model given is "
                f"{fingerprint}; use the collection's model ({coll.model_path}) or re-embed into a new collection")
        return coll

    def close(self) -> None:
        if self._cache is not None and self.milvus:
            self._cache.close()
        self.store.close()

    @property
    def milvus(self) -> bool:
        return is_milvus(self.store_spec)

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the index cache ---

    def index(self) -> VectorIndex:
        """The index, loaded (snapshot + catch-up, or a rebuild) on first use and kept up with the database."""
        with self._cache_lock:
            if self._cache is None and self.milvus:
                from qkcopy.collection.milvus import MilvusIndex

                self._cache = MilvusIndex.open(self.store, milvus_uri(self.store_spec, self.root), self.milvus_name,
                                               self.dim, self.kind, self.params)
            if self._cache is None:
                self._cache = IndexCache.open(self.store, self.root / CACHE_DIR, self.fingerprint, self.dim,
                                              self.kind, self.params)
            try:
                self._cache.catch_up(self.store)
            except StaleCache as err:
                log.warning("%s; rebuilding the index", err)
                self._cache = IndexCache.build(self.store, self.dim, self.kind, self.params)
                self._cache.catch_up(self.store)
            return self._cache

    def snapshot(self) -> int:
        """Write the index snapshot, then drop the change log it holds. Returns the snapshot's change seq."""
        with self._snapshot_lock:  # one writer of cache/ per process (the periodic one and the one at shutdown)
            seq = self.index().snapshot(self.root / CACHE_DIR, self.fingerprint)
            if self.milvus:
                self.store.set_settings(dict(milvus_seq=seq))  # Milvus flushed up to seq: replay starts there
            self.store.truncate_changes(seq)
        return seq

    def reindex(self, kind: str, nlist: int | None = None, nprobe: int | None = None, m: int | None = None,
                rerank: int | None = None) -> None:
        """Rebuild the index as `kind` (IVF types trained on the current references) and pin that type;
        `rerank` (IVF-PQ): the shortlist factor of `search` (0: code distances alone)."""
        check_index_params(kind, self.dim, nlist, nprobe, m, rerank)
        params = {k: v for k, v in dict(nlist=nlist, nprobe=nprobe, m=m).items() if v}
        if self.milvus:  # Milvus builds its own index over the rows it holds
            n = len(self.store.all_ids())
            if kind != "flat":
                params = dict(params, nlist=min(int(params.get("nlist") or default_nlist(n)), max(n, 1)),
                              nprobe=int(params.get("nprobe") or 16))
            if kind == "ivfpq" and rerank is not None:
                params["rerank"] = int(rerank)
            self.index().reindex(kind, params)
            self.store.set_settings(dict(index=kind, index_params=params))
            self.kind, self.params = kind, params
            return
        cache = IndexCache.build(self.store, self.dim, kind, params)
        if kind == "ivfpq" and rerank is not None:
            cache.params = {**cache.params, "rerank": int(rerank)}
        self.store.set_settings(dict(index=kind, index_params=cache.params))
        self.kind, self.params = kind, cache.params
        with self._cache_lock:
            self._cache = cache
        self.snapshot()

    def move_vectors(self, vectors: str) -> int:
        """Keep the vectors in another store ("faiss", "milvus-lite", "milvus://host:port"), built from the
        database, which holds every row, with an exact (flat) index; returns how many references it holds."""
        check_store(vectors)
        with self._cache_lock:
            if self._cache is not None and self.milvus:
                self._cache.close()
            self._cache = None
            self.store.set_settings(dict(store=vectors, milvus_seq=0, index="flat", index_params={},
                                         milvus_collection=new_milvus_name() if is_milvus(vectors) else None))
            self.store_spec, self.milvus_name = vectors, self.store.settings()["milvus_collection"]
            self.kind, self.params = "flat", {}  # the new store starts exact; `reindex` there when it is built
        self.snapshot()  # builds the new store, then records how far it holds the change log
        return len(self.index())

    def check(self) -> dict:
        """Index == database? {'database': n, 'index': n, 'missing': [...], 'extra': [...]}: ids, first 10."""
        cache = self.index()
        with cache.lock:
            db_ids, index_ids = self.store.all_ids(), cache.ids()
        missing = np.setdiff1d(db_ids, index_ids)
        extra = np.setdiff1d(index_ids, db_ids)
        return dict(database=len(db_ids), index=len(index_ids), missing=missing[:10].tolist(),
                    extra=extra[:10].tolist(), consistent=not len(missing) and not len(extra))

    # --- references ---

    def add(self, refs: Sequence[NewRef]) -> list[AddedRef]:
        """Commit the references (one transaction), then bring the index up to date."""
        for r in refs:
            check_bank(r.bank)
        added = self.store.add(refs, self.dim)
        if self._cache is not None or self.milvus:
            self.index()  # replay the new changes into the index (Milvus: before the write is acknowledged)
        return added

    def remove(self, ids: Sequence[int]) -> list[int]:
        gone = self.store.remove(ids)
        if self._cache is not None or self.milvus:
            self.index()
        return gone

    def get(self, ref_id: int) -> Ref | None:
        return self.store.get([ref_id]).get(int(ref_id))

    def list(self, bank: str | None = None, after: int = 0, limit: int = 100) -> list[Ref]:
        return self.store.list(bank, after, limit)

    def stats(self) -> dict:
        banks = self.store.counts()
        out = dict(references=sum(banks.values()), banks=banks, model=self.fingerprint, model_path=self.model_path,
                   dim=self.dim, store=self.store_spec, index=self.kind, index_params=self.params,
                   threshold=self.threshold_score)
        if self._cache is not None:
            out["indexed"] = len(self._cache)
        return out

    def load_model(self, model: str | Path | None = None, device: str = "auto"):
        """The collection's model, or `model`, which must be the pinned one.

        Returns:
            `qkcopy.model.trained.TrainedModels` on `device`.
        Raises:
            ValueError: no model given and none recorded. FingerprintMismatch: another model.
        """
        from qkcopy.model.trained import load_trained

        model = model or self.model_path
        if model is None:
            raise ValueError(f"{self.root} records no model path; pass --model")
        trained = load_trained(model, device)
        if trained.fingerprint != self.fingerprint:
            raise FingerprintMismatch(f"{model} is model {trained.fingerprint}, but {self.root} holds references of "
                                      f"model {self.fingerprint}; use the collection's model ({self.model_path}) or "
                                      "re-embed into a new collection", model)
        return trained

    # --- matching ---

    @property
    def threshold_score(self) -> float | None:
        return threshold_score(self.threshold)

    def search(self, vectors: np.ndarray, k: int = 10, bank: str | None = None,
               nprobe: int | None = None) -> list[list[MatchRow]]:
        """The k best references of each query descriptor (Q side), best first, with metadata and verdict.

        An IVF-PQ index shortlists k·R (`index_params["rerank"]`, default RERANK; 0: off) by its code distances
        and the shortlist is ordered by exact distance from the database's vectors, so scores are exact."""
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
        if bank is not None:
            check_bank(bank)
        rerank = int(self.params.get("rerank", RERANK)) if self.kind == "ivfpq" else 0
        sqdist, ids = self.index().search(vectors, k * max(rerank, 1), bank, nprobe)  # (Nq, k·R) each
        if rerank:  # IVF-PQ's code distances shortlist; the database's exact vectors order the shortlist
            sqdist, ids = rerank_exact(vectors, ids, lambda wanted: self.store.vectors_of(self.dim, wanted), k)
        refs = self.store.get(np.unique(ids[ids >= 0]).tolist())
        out = []
        for row_d, row_i in zip(sqdist, ids):
            matches = []
            for d, i in zip(row_d.tolist(), row_i.tolist()):
                ref = refs.get(i)
                if ref is None:  # removed between the search and the lookup
                    continue
                score = -d
                matches.append(MatchRow(ref.id, ref.name, ref.bank, ref.meta, score, is_copy(score, self.threshold)))
            out.append(matches)
        return out
