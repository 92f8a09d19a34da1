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


def net_changes(changes: list[Change]) -> tuple[list[int], list[int]]:
    """(removed ids, added ids): the net effect per id of changes in log order (added then removed: neither)."""
    final: dict[int, str] = {}
    for c in changes:
        final[c.ref_id] = c.op
    return [i for i, op in final.items() if op == "remove"], [i for i, op in final.items() if op == "add"]
