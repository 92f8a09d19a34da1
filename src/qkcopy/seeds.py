"""Seeds derived from the run seed, the same on every platform: one stream per purpose, never colliding.

`derive_seed(*ints)` seeds the data streams (query edits, batch order, banks: `data.training`), `part_seed`
the model parts (backbone and each head: `model.descriptor`). Both are fixed formulas: changing either
changes every trained model and benchmark built with it.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. stream, base seed, phase, epoch, image index)."""
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def part_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one named model part ("backbone", "q_head", "k_head") of a run seeded `seed`."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") >> 1
