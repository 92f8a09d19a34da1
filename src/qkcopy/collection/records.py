"""The records the collection's database hands out and takes in (see store.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NewRef:
    name: str
    sha256: str
    bank: str
    meta: dict
    vector: np.ndarray  # (E,) float32
    thumb: bytes | None = None


@dataclass(frozen=True)
class Ref:
    id: int
    name: str
    sha256: str
    bank: str
    meta: dict
    added_at: float

    def as_dict(self) -> dict:
        return dict(id=self.id, name=self.name, sha256=self.sha256, bank=self.bank, metadata=self.meta,
                    added_at=self.added_at)


@dataclass(frozen=True)
class AddedRef:
    id: int
    existing: bool  # True: these bytes were already in this bank; nothing was added


@dataclass(frozen=True)
class Change:
    seq: int
    op: str  # "add" | "remove"
    ref_id: int
    bank: str
