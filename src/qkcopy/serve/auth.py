"""API keys: random tokens shown once, stored as SHA-256 hashes, compared in constant time, scoped.

Scopes: "read" (match, look up references, stats) and "write" (add and remove references). A key is a
random 256-bit token, so an unsalted SHA-256 is enough to make the stored hash useless to a thief (as for
GitHub's tokens); every stored hash is compared with `hmac.compare_digest`, all of them, on every request.
The web framework is not imported here: the app maps `Unauthorized` to 401 and `Forbidden` to 403.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from qkcopy.collection.store import Store

SCOPES = ("read", "write")
PREFIX = "qk_"
RELOAD_S = 2.0  # a revoked key stops working within this long on a running server


class Unauthorized(PermissionError):
    """No key, or a key that is not (or no longer) valid."""


class Forbidden(PermissionError):
    """A valid key without the scope the request needs."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ValueError(f"scopes must be among {SCOPES}, got {list(scopes)}")
    return tuple(sorted(set(scopes)))


def create_key(store: Store, name: str, scopes: Sequence[str]) -> str:
    """A new key for `name`; returns the token, which is not stored anywhere and cannot be shown again."""
    if not name or not name.isprintable() or len(name) > 64:
        raise ValueError(f"key name must be 1–64 printable characters, got {name!r}")
    token = PREFIX + secrets.token_urlsafe(32)
    store.add_key(name, hash_key(token), check_scopes(scopes))
    return token


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: tuple[str, ...]


class KeyRing:
    """The keys of one collection, re-read from the database every RELOAD_S seconds."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._keys: list[tuple[bytes, Principal]] = []
        self._loaded = -float("inf")
        self._lock = threading.Lock()

    def _current(self) -> list[tuple[bytes, Principal]]:
        with self._lock:
            if time.monotonic() - self._loaded > RELOAD_S:
                self._keys = [(bytes.fromhex(h), Principal(n, s)) for n, h, s, _ in self.store.keys()]
                self._loaded = time.monotonic()
            return self._keys

    def __len__(self) -> int:
        return len(self._current())

    def check(self, token: str | None, scope: str) -> Principal:
        """The key's owner when `token` is valid and has `scope`; Unauthorized / Forbidden otherwise."""
        if not token:
            raise Unauthorized("no API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        presented = bytes.fromhex(hash_key(token))
        found = None
        for stored, principal in self._current():  # no early exit: the time does not depend on which key
            if hmac.compare_digest(stored, presented):
                found = principal
        if found is None:
            raise Unauthorized("invalid API key")
        if scope not in found.scopes:
            raise Forbidden(f"API key {found.name!r} lacks the {scope!r} scope (it has {', '.join(found.scopes)})")
        return found
