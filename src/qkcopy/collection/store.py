"""The reference collection's database: the one module that speaks SQL, and the source of truth.

A collection is a folder holding `collection.db` (SQLite in WAL mode, synchronous=FULL, so a commit that
returned survives a `kill -9` or a power cut) and `cache/` (the faiss index, a rebuildable cache: see
cache.py). Tables:

- `settings` (key, value JSON): format, model fingerprint, descriptor dim, threshold, index type and
  parameters, `log_floor` (changes up to it were dropped from `changes` after a snapshot held them).
- `refs`: one row per reference: id (never reused), name, sha256 of the file bytes, bank, metadata JSON,
  added_at. (bank, sha256) is unique: adding the same bytes to the same bank again returns the existing row.
- `ref_vectors` (the E-d K descriptor, float32 bytes) and `ref_thumbs` (a small JPEG), one row per reference,
  apart from `refs` so that the rows a lookup reads stay small (at 1M references `refs` is ~10% of the file
  and stays in the page cache; the vectors are read only to rebuild or catch up the index).
- `changes` (seq, op, ref_id, bank): every add and remove, in commit order; the index cache replays the ones
  after its snapshot.
- `api_keys` (name, hash, scopes): the service's keys, stored as SHA-256 hashes only (see serve/auth.py).

Every user-visible operation is one transaction; all SQL is parametrised. Letters: N rows, E descriptor dim.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from qkcopy.collection.records import AddedRef, Change, NewRef, Ref

SCHEMA_VERSION = 1
DB_NAME = "collection.db"

# One list, applied in order; schema version v is reached by running MIGRATIONS[:v].
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE refs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        bank TEXT NOT NULL,
        meta TEXT NOT NULL,
        added_at REAL NOT NULL,
        UNIQUE (bank, sha256)
    );
    CREATE TABLE ref_vectors (id INTEGER PRIMARY KEY REFERENCES refs (id) ON DELETE CASCADE, vector BLOB NOT NULL);
    CREATE TABLE ref_thumbs (id INTEGER PRIMARY KEY REFERENCES refs (id) ON DELETE CASCADE, thumb BLOB NOT NULL);
    CREATE INDEX refs_bank ON refs (bank, id);
    CREATE TABLE changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
        ref_id INTEGER NOT NULL,
        bank TEXT NOT NULL
    );
    CREATE TABLE api_keys (
        name TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
)


class StoreError(ValueError):
    """The database is not a qkcopy collection, or is of a newer schema."""


_REF_COLUMNS = "id, name, sha256, bank, meta, added_at"
# AUTOINCREMENT's high-water mark: still right after `truncate_changes` emptied the table.
_LAST_SEQ = "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)"


def _ref(row: tuple) -> Ref:
    return Ref(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5])


class Store:
    """A connection to one collection.db, safe to share between threads (one lock serialises its use)."""

    def __init__(self, path: str | Path, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist; create the collection with "
                                    "`qkcopy collection create`")
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- transactions and schema ---

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error) under the lock: one per user-visible operation."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {version}, newer than this qkcopy "
                                 f"({SCHEMA_VERSION}); upgrade qkcopy")
            for v in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[v].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # an int constant, not user input

    # --- settings ---

    def settings(self) -> dict:
        with self._lock:
            return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM settings")}

    def set_settings(self, values: dict) -> None:
        with self._tx() as db:
            db.executemany("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                           "SET value = excluded.value", [(k, json.dumps(v)) for k, v in values.items()])

    # --- references ---

    def add(self, refs: Sequence[NewRef], dim: int) -> list[AddedRef]:
        """Insert references (an exact re-add in the same bank returns the existing id); one transaction."""
        out: list[AddedRef] = []
        now = time.time()
        with self._tx() as db:
            for r in refs:
                vector = np.asarray(r.vector, dtype=np.float32)
                if vector.shape != (dim,) or not np.isfinite(vector).all():
                    raise ValueError(f"reference {r.name!r}: descriptor must be finite float32 ({dim},), "
                                     f"got {vector.shape}")
                row = db.execute("SELECT id FROM refs WHERE bank = ? AND sha256 = ?", (r.bank, r.sha256)).fetchone()
                if row is not None:
                    out.append(AddedRef(row[0], True))
                    continue
                cur = db.execute("INSERT INTO refs (name, sha256, bank, meta, added_at) VALUES (?, ?, ?, ?, ?)",
                                 (r.name, r.sha256, r.bank, json.dumps(r.meta, sort_keys=True), now))
                db.execute("INSERT INTO ref_vectors (id, vector) VALUES (?, ?)", (cur.lastrowid, vector.tobytes()))
                if r.thumb:
                    db.execute("INSERT INTO ref_thumbs (id, thumb) VALUES (?, ?)", (cur.lastrowid, r.thumb))
                db.execute("INSERT INTO changes (op, ref_id, bank) VALUES ('add', ?, ?)", (cur.lastrowid, r.bank))
                out.append(AddedRef(cur.lastrowid, False))
        return out

    def remove(self, ids: Sequence[int]) -> list[int]:
        """Delete these references; returns the ids that existed (and are now gone). One transaction."""
        gone: list[int] = []
        with self._tx() as db:
            for i in ids:
                row = db.execute("SELECT bank FROM refs WHERE id = ?", (int(i),)).fetchone()
                if row is None:
                    continue
                db.execute("DELETE FROM refs WHERE id = ?", (int(i),))  # cascades to its vector and thumbnail
                db.execute("INSERT INTO changes (op, ref_id, bank) VALUES ('remove', ?, ?)", (int(i), row[0]))
                gone.append(int(i))
        return gone

    def get(self, ids: Sequence[int]) -> dict[int, Ref]:
        """The references among `ids` that exist, by id."""
        rows = self._where_in(f"SELECT {_REF_COLUMNS} FROM refs WHERE id IN ({{marks}})", [int(i) for i in ids])
        return {row[0]: _ref(row) for chunk in rows for row in chunk}

    def _where_in(self, sql: str, values: Sequence, before: Sequence = ()) -> Iterator[list[tuple]]:
        """`sql` with "{marks}" run over `values` in chunks of 500 bound parameters (after `before`)."""
        values = list(values)
        for start in range(0, len(values), 500):
            chunk = values[start:start + 500]
            with self._lock:  # the placeholders only are formatted into the SQL; the values are bound
                rows = self._db.execute(sql.format(marks=",".join("?" * len(chunk))), [*before, *chunk]).fetchall()
            yield rows

    def thumbnail(self, ref_id: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT thumb FROM ref_thumbs WHERE id = ?", (int(ref_id),)).fetchone()
        return None if row is None else row[0]

    def known_hashes(self, bank: str, hashes: Sequence[str]) -> dict[str, int]:
        """sha256 → id for the hashes already in `bank`."""
        rows = self._where_in("SELECT sha256, id FROM refs WHERE bank = ? AND sha256 IN ({marks})", hashes, [bank])
        return {h: i for chunk in rows for h, i in chunk}

    def list(self, bank: str | None = None, after: int = 0, limit: int = 100) -> list[Ref]:
        """References in id order, `limit` of them after id `after` (keyset pagination)."""
        sql = f"SELECT {_REF_COLUMNS} FROM refs WHERE id > ?"
        args: list = [int(after)]
        if bank is not None:
            sql += " AND bank = ?"
            args.append(bank)
        with self._lock:
            return [_ref(r) for r in self._db.execute(sql + " ORDER BY id LIMIT ?", [*args, int(limit)])]

    def counts(self) -> dict[str, int]:
        """References per bank."""
        with self._lock:
            return dict(self._db.execute("SELECT bank, COUNT(*) FROM refs GROUP BY bank ORDER BY bank"))

    def all_ids(self) -> np.ndarray:
        with self._lock:
            return np.fromiter((r[0] for r in self._db.execute("SELECT id FROM refs ORDER BY id")), np.int64)

    def vectors(self, dim: int, ids: Sequence[int] | None = None,
                batch: int = 50_000) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
        """(ids (n,) int64, banks, vectors (n, E) float32) in chunks: all references, or those among `ids`."""
        if ids is not None:
            for rows in self._where_in("SELECT r.id, r.bank, v.vector FROM refs r JOIN ref_vectors v ON v.id = r.id "
                                       "WHERE r.id IN ({marks}) ORDER BY r.id",
                                       [int(i) for i in ids]):
                if rows:
                    yield _unpack(rows, dim)
            return
        after = 0
        while True:
            with self._lock:
                rows = self._db.execute("SELECT r.id, r.bank, v.vector FROM refs r JOIN ref_vectors v ON v.id = r.id "
                                        "WHERE r.id > ? ORDER BY r.id LIMIT ?", (after, batch)).fetchall()
            if not rows:
                return
            yield _unpack(rows, dim)
            after = rows[-1][0]

    def vectors_of(self, dim: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found ids (m,) int64, their vectors (m, E) float32) of `ids`; removed ids are absent."""
        chunks = list(self.vectors(dim, np.asarray(ids).tolist()))
        if not chunks:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[2] for c in chunks])

    # --- the change log the index cache replays ---

    def last_seq(self) -> int:
        with self._lock:
            return self._db.execute(_LAST_SEQ).fetchone()[0]

    def changes_after(self, seq: int) -> list[Change]:
        with self._lock:
            return [Change(*r) for r in self._db.execute(
                "SELECT seq, op, ref_id, bank FROM changes WHERE seq > ? ORDER BY seq", (int(seq),))]

    def truncate_changes(self, upto: int) -> None:
        """Drop the changes a durable snapshot now holds; `log_floor` records how far the log was cut."""
        with self._tx() as db:
            db.execute("DELETE FROM changes WHERE seq <= ?", (int(upto),))
            db.execute("INSERT INTO settings (key, value) VALUES ('log_floor', ?) ON CONFLICT (key) DO UPDATE "
                       "SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))", (str(int(upto)),))


    # --- API keys (hashes only) ---

    def add_key(self, name: str, key_hash: str, scopes: Sequence[str]) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"an API key named {name!r} exists already; revoke it first or pick another name")
            db.execute("INSERT INTO api_keys (name, hash, scopes, created_at) VALUES (?, ?, ?, ?)",
                       (name, key_hash, ",".join(scopes), time.time()))

    def keys(self) -> list[tuple[str, str, tuple[str, ...], float]]:
        """(name, hash, scopes, created_at) of every key."""
        with self._lock:
            return [(n, h, tuple(s.split(",")), t) for n, h, s, t in
                    self._db.execute("SELECT name, hash, scopes, created_at FROM api_keys ORDER BY name")]

    def revoke_key(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM api_keys WHERE name = ?", (name,)).rowcount > 0


def _unpack(rows: list[tuple], dim: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    ids = np.array([r[0] for r in rows], np.int64)
    banks = [r[1] for r in rows]
    vectors = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(len(rows), dim)  # (n, E)
    return ids, banks, vectors.copy()

