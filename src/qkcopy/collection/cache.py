"""The faiss index of a collection: a cache of the database, snapshotted to disk and caught up on start.

The index holds each reference's K descriptor under its database id (faiss ids = `refs.id`), and one
membership bitmap per bank, so a lookup can be limited to a bank (a faiss `IDSelectorBitmap`) without
scanning or over-fetching. It is rebuilt from the database whenever it cannot be trusted:

- `snapshot()` writes `cache/` (index.faiss, banks.npz, meta.json with the change `seq` it includes) into a
  temporary folder and swaps it in by rename (qkcopy.io.atomic_dir): a crash leaves the old snapshot or the
  new one, never a mix.
- `IndexCache.open` loads the snapshot when it matches the collection (model fingerprint, dim, index type)
  and replays the changes after its `seq`; with no usable snapshot, or when the log was cut past it, it
  rebuilds from every row of the database.

Types: "flat" (exact, `IndexIDMap2` over `IndexFlatL2`), "ivf" (`IndexIVFFlat`), "ivfpq" (`IndexIVFPQ`);
IVF types are trained on the collection's descriptors (seed 0) when built.

Letters: N references, Nq queries, E descriptor dim, k neighbours.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import faiss
import numpy as np

from qkcopy.collection.records import Change, net_changes
from qkcopy.collection.store import Store
from qkcopy.io import atomic_dir, recover_dir
from qkcopy.retrieval.faiss_index import MIN_POINTS_PER_CELL, default_nlist, new_faiss_index

log = logging.getLogger(__name__)

FORMAT = "qkcopy-collection-cache/1"
MAX_TRAIN = 200_000  # IVF k-means sample


def _empty_index(dim: int, kind: str, params: dict, train: np.ndarray | None, n: int) -> tuple[faiss.Index, dict]:
    """The collection's rule on top of the one builder: its configured nlist is a cap that follows its size `n`
    and the training sample (at least MIN_POINTS_PER_CELL sample rows a cell)."""
    nlist = None
    if kind != "flat" and n:
        cap = min(default_nlist(n), max(1, len(train) // MIN_POINTS_PER_CELL))
        nlist = min(int(params.get("nlist") or cap), cap)
    return new_faiss_index(kind, dim, train, nlist, params.get("m"), params.get("nprobe"), seed=0,
                           max_train=MAX_TRAIN, with_ids=True)


class IndexCache:
    """faiss index + per-bank bitmaps, as of change `seq` of the database. Thread-safe (one lock)."""

    def __init__(self, index: faiss.Index, kind: str, params: dict, seq: int = 0,
                 banks: dict[str, np.ndarray] | None = None) -> None:
        self.index, self.kind, self.params, self.seq = index, kind, params, seq
        self.banks: dict[str, np.ndarray] = banks or {}  # bank → (max id + 1,) bool
        self._packed: dict[str, np.ndarray] = {}  # bank → little-endian packed bitmap, rebuilt lazily
        self.lock = threading.RLock()

    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    # --- building and keeping up with the database ---

    @classmethod
    def build(cls, store: Store, dim: int, kind: str, params: dict) -> IndexCache:
        """Every row of the database, streamed in chunks (never all vectors in memory at once: a 10M collection
        holds 10 GB of them); IVF types are trained first on a sample of at most MAX_TRAIN rows (seed 0). Rows
        change while they are read: the cache starts at the change seq read first, and `catch_up`
        (idempotent: it skips ids already present) reconciles the rest."""
        seq = store.last_seq()
        train, n = None, 0
        if kind != "flat":
            ids = store.all_ids()
            n = len(ids)
            if n > MAX_TRAIN:
                ids = np.sort(np.random.default_rng(0).choice(ids, MAX_TRAIN, replace=False))
            chunks = [c[2] for c in store.vectors(dim, ids.tolist() if n > MAX_TRAIN else None)]
            train = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
            del chunks
        index, params = _empty_index(dim, kind, params, train, n)
        del train
        cache = cls(index, kind, params, seq)
        for ids, banks, vectors in store.vectors(dim):
            cache.add(ids, banks, vectors)
        log.info("index rebuilt from the database: %d references (%s)", len(cache), kind)
        return cache

    def catch_up(self, store: Store) -> int:
        """Apply the database's changes after `seq`; returns how many were applied."""
        with self.lock:
            if store.last_seq() == self.seq:  # the common case: one cheap query
                return 0
            floor = int(store.settings().get("log_floor", 0))
            if self.seq < floor:
                raise StaleCache(f"the change log was cut at {floor}, after this index's {self.seq}")
            changes = store.changes_after(self.seq)
            if not changes:
                return 0
            self._apply(changes, store)
            return len(changes)

    def _apply(self, changes: list[Change], store: Store) -> None:
        removed, added = net_changes(changes)  # an id added then removed since the snapshot needs nothing
        self.remove(np.array(removed, np.int64))
        for ids, banks, vectors in store.vectors(self.dim, added):  # rows removed meanwhile are absent
            present = self._present(ids)
            self.add(ids[~present], [b for b, p in zip(banks, present) if not p], vectors[~present])
        self.seq = changes[-1].seq

    def _present(self, ids: np.ndarray) -> np.ndarray:
        out = np.zeros(len(ids), bool)
        for bitmap in self.banks.values():
            inside = ids < len(bitmap)
            out[inside] |= bitmap[ids[inside]]
        return out

    def add(self, ids: np.ndarray, banks: list[str], vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        with self.lock:
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
            for bank in set(banks):
                sel = np.asarray(ids)[np.array([b == bank for b in banks])]
                bitmap = self.banks.get(bank, np.zeros(0, bool))
                if sel.max() >= len(bitmap):
                    bitmap = np.concatenate([bitmap, np.zeros(max(sel.max() + 1 - len(bitmap), len(bitmap)), bool)])
                bitmap[sel] = True
                self.banks[bank] = bitmap
                self._packed.pop(bank, None)

    def remove(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        with self.lock:
            self.index.remove_ids(np.asarray(ids, np.int64))
            for bank, bitmap in self.banks.items():
                inside = ids[ids < len(bitmap)]
                if bitmap[inside].any():
                    bitmap[inside] = False
                    self._packed.pop(bank, None)

    # --- searching ---

    def search(self, vectors: np.ndarray, k: int, bank: str | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest references: sqdist (Nq, k) float32 ascending, ids (Nq, k) int64 (−1 pads)."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or vectors.dtype != np.float32:
            raise ValueError(f"query descriptors must be float32 (Nq, {self.dim}), got {vectors.shape} {vectors.dtype}")
        with self.lock:
            params = faiss.SearchParametersIVF() if self.kind != "flat" else faiss.SearchParameters()
            if self.kind != "flat":
                params.nprobe = min(int(nprobe or self.params.get("nprobe", 1)), self.params["nlist"])
            if bank is not None:
                if bank not in self.banks:
                    return (np.full((len(vectors), k), np.inf, np.float32), np.full((len(vectors), k), -1, np.int64))
                packed = self._packed.get(bank)
                if packed is None:
                    packed = self._packed[bank] = np.packbits(self.banks[bank], bitorder="little")
                params.sel = faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed))
            sqdist, ids = self.index.search(np.ascontiguousarray(vectors), k, params=params)  # (Nq, k)
        sqdist = np.where(ids < 0, np.inf, np.maximum(sqdist, 0.0)).astype(np.float32)
        return sqdist, ids.astype(np.int64)

    def ids(self) -> np.ndarray:
        """The ids the faiss index holds, sorted (read from the index itself, not the bitmaps)."""
        with self.lock:
            if self.kind == "flat":
                return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))
            lists = faiss.extract_index_ivf(self.index).invlists
            parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                     for i in range(lists.nlist) if lists.list_size(i)]
            return np.sort(np.concatenate(parts).astype(np.int64)) if parts else np.zeros(0, np.int64)

    # --- the snapshot on disk ---

    def snapshot(self, directory: str | Path, fingerprint: str) -> int:
        """Write the snapshot; returns the change seq it holds. Lookups wait only for the in-memory copy."""
        with self.lock:  # a consistent (index, banks, seq) triple; written to disk outside the lock
            blob = faiss.serialize_index(self.index)
            names = sorted(self.banks)
            arrays = {f"b{i}": np.flatnonzero(self.banks[b]).astype(np.int64) for i, b in enumerate(names)}
            meta = dict(format=FORMAT, fingerprint=fingerprint, dim=self.dim, kind=self.kind, params=self.params,
                        seq=self.seq, n=len(self), banks=names)
        with atomic_dir(directory) as tmp:
            (tmp / "index.faiss").write_bytes(blob.tobytes())
            np.savez(tmp / "banks.npz", **arrays)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
            for f in tmp.iterdir():
                _fsync(f)
        _fsync(Path(directory).parent)
        log.info("snapshot of %d references at change %d written to %s", meta["n"], meta["seq"], directory)
        return meta["seq"]

    @classmethod
    def load(cls, directory: str | Path, fingerprint: str, dim: int, kind: str) -> IndexCache | None:
        """The snapshot in `directory`, or None when there is none or it is not this collection's."""
        directory = Path(directory)
        recover_dir(directory)
        if not (directory / "meta.json").is_file():
            log.info("no index snapshot in %s yet; building the index from the database", directory)
            return None
        try:
            meta = json.loads((directory / "meta.json").read_text())
            if (meta.get("format"), meta.get("fingerprint"), meta.get("dim"), meta.get("kind")) != \
                    (FORMAT, fingerprint, dim, kind):
                log.warning("snapshot in %s is for another model or index type; rebuilding", directory)
                return None
            index = faiss.read_index(str(directory / "index.faiss"))  # no intermediate copy of the bytes
            with np.load(directory / "banks.npz", allow_pickle=False) as z:
                members = {b: z[f"b{i}"] for i, b in enumerate(meta["banks"])}
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            log.warning("no usable snapshot in %s (%s); rebuilding from the database", directory, err)
            return None
        if index.ntotal != meta["n"] or sum(len(v) for v in members.values()) != meta["n"]:
            log.warning("snapshot in %s is inconsistent; rebuilding from the database", directory)
            return None
        banks = {}
        for b, ids in members.items():
            bitmap = np.zeros(int(ids.max()) + 1 if len(ids) else 0, bool)
            bitmap[ids] = True
            banks[b] = bitmap
        return cls(index, kind, meta["params"], int(meta["seq"]), banks)

    @classmethod
    def open(cls, store: Store, directory: str | Path, fingerprint: str, dim: int, kind: str,
             params: dict) -> IndexCache:
        """The snapshot caught up with the database, or a rebuild when that is not possible."""
        cache = cls.load(directory, fingerprint, dim, kind)
        if cache is not None:
            try:
                n = cache.catch_up(store)
                log.info("index: snapshot + %d changes replayed (now at change %d)", n, cache.seq)
                return cache
            except StaleCache as err:
                log.warning("%s; rebuilding the index from the database", err)
        return cls.build(store, dim, kind, params)


class StaleCache(RuntimeError):
    """The index is older than the oldest change the database still logs: rebuild it."""


def _fsync(path: Path) -> None:
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
