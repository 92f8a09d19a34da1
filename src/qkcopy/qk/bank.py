"""The bank: the frozen side's features for every training image, on disk, memory-mapped.

Letters: N bank rows, D backbone feature dim, G gist256 dim, F = D + G row width, C rows in one chunk.

A row is concat(frozen backbone feature, gist256) in float16 (the one dtype policy: bank fp16, arithmetic
fp32). File layout: 8-byte magic, 8-byte little-endian header length, the JSON header, zero padding up to a
4096-byte boundary, then the (N, F) float16 rows in C order. The header records shape, dtype, the frozen
model's fingerprint and the data fingerprint, so a later run reuses a bank that still matches and refuses a
stale one. Files are written under a temporary name and renamed when complete, so a crash never leaves a
bank that looks valid.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from qkcopy.distributed import Dist, shard_range
from qkcopy.io import atomic_path

log = logging.getLogger(__name__)

MAGIC = b"QKBANK01"
ALIGN = 4096


class StaleBankError(ValueError):
    """A bank file exists but was built by another model or from other data."""


@dataclass(frozen=True)
class BankHeader:
    n_rows: int
    feature_dim: int  # D
    gist_dim: int  # G
    model_hash: str  # fingerprint of the frozen backbone that made the rows
    data_hash: str  # fingerprint of the images (and query recipe) the rows were made from
    side: str  # "K" (original images) or "Q" (one augmented query per image)
    dtype: str = "float16"

    @property
    def width(self) -> int:
        return self.feature_dim + self.gist_dim


def _data_offset(header_bytes: bytes) -> int:
    return -(-(16 + len(header_bytes)) // ALIGN) * ALIGN


class Bank:
    """An opened bank: `rows` is an (N, F) float16 tensor backed by the memory-mapped file."""

    def __init__(self, path: Path, header: BankHeader, rows: torch.Tensor):
        self.path, self.header, self.rows = path, header, rows

    def __len__(self) -> int:
        return self.header.n_rows

    @classmethod
    def open(cls, path: str | Path, model_hash: str | None = None, data_hash: str | None = None) -> Bank:
        path = Path(path)
        with open(path, "rb") as f:
            if f.read(8) != MAGIC:
                raise ValueError(f"{path} is not a qkcopy bank file (bad magic)")
            header_bytes = f.read(int.from_bytes(f.read(8), "little"))
        header = BankHeader(**json.loads(header_bytes))
        for name, want in (("model_hash", model_hash), ("data_hash", data_hash)):
            have = getattr(header, name)
            if want is not None and have != want:
                raise StaleBankError(f"{path}: bank {name} {have} does not match the current {want}; rebuild it")
        expected = _data_offset(header_bytes) + header.n_rows * header.width * 2
        if path.stat().st_size != expected:
            raise ValueError(f"{path}: size {path.stat().st_size} bytes, header says {expected}; file is damaged")
        array = np.memmap(path, dtype=np.float16, mode="r", offset=_data_offset(header_bytes),
                          shape=(header.n_rows, header.width))
        # A read-only shared mapping: no memory is committed for it, so a bank larger than RAM opens (a
        # copy-on-write one is refused beyond free memory: ENOMEM at 10M rows, 31 GB, on a 23 GB machine).
        # torch warns that the tensor is not writable; nothing writes to bank rows.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            rows = torch.from_numpy(array)
        return cls(path, header, rows)

    def chunks(self, chunk_rows: int, device: torch.device | str = "cpu") -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (row_offset, rows (C, F) float32 on device) over the whole bank."""
        return self.shard(0, 1, chunk_rows, device).chunks()

    def shard(self, rank: int, world: int, chunk_rows: int, device: torch.device | str = "cpu",
              mining_dtype: torch.dtype = torch.float32) -> BankShard:
        """This rank's contiguous part of the bank (`shard_range`), as the QK step reads it."""
        start, stop = shard_range(self.header.n_rows, rank, world)
        return BankShard(self.rows[start:stop], start, self.header.feature_dim, chunk_rows, torch.device(device),
                         mining_dtype)

    def take(self, index: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Rows at `index` (S,) int64 → (S, F) float32 on device."""
        return self.rows[index.cpu()].to(device).float()

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, F) rows → (features (S, D), gist256 (S, G))."""
        return rows[:, :self.header.feature_dim], rows[:, self.header.feature_dim:]


@dataclass(frozen=True)
class BankShard:
    """Bank rows start … stop−1 as one rank sees them (the whole bank in a single process).

    `rows` holds only this shard, (N_r, F) float16 (a view of the memory-mapped file, or rows a rank built
    itself); every row number it takes or yields is global.
    """

    rows: torch.Tensor  # (N_r, F) float16
    start: int
    feature_dim: int  # D
    chunk_rows: int  # C
    device: torch.device = torch.device("cpu")
    mining_dtype: torch.dtype = torch.float32  # dtype of the chunks of the no-grad pass

    def __post_init__(self) -> None:
        if self.rows.ndim != 2 or self.rows.shape[1] <= self.feature_dim or self.chunk_rows < 1:
            raise ValueError(f"bank shard needs rows (N_r, F > {self.feature_dim}) and chunk_rows >= 1, got "
                             f"{tuple(self.rows.shape)} and {self.chunk_rows}")

    @property
    def stop(self) -> int:
        return self.start + self.rows.shape[0]

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(global row offset, rows (C, F) in `mining_dtype` on the device) over the shard."""
        for s in range(0, self.rows.shape[0], self.chunk_rows):
            chunk = self.rows[s:s + self.chunk_rows].to(self.device, non_blocking=True)
            yield self.start + s, chunk.to(self.mining_dtype)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Rows at global `index` (S_r,) int64, all inside the shard → (S_r, F) float32 on the device."""
        return self.rows[index.cpu() - self.start].to(self.device).float()

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, F) rows → (features (S, D), gist256 (S, G))."""
        return rows[:, :self.feature_dim], rows[:, self.feature_dim:]


def choose_chunk_rows(free_bytes: int, batch: int, width: int, hidden: int, descriptor_dim: int,
                      fraction: float = 0.5, multiple: int = 1024, most: int = 1 << 20) -> int:
    """Bank rows per chunk whose transient memory in one bank-pass step fits in fraction · free_bytes.

    Per row: the fp16 row copied to the device (2F) and cast (4F), the head's concat (4F), hidden (4H) and
    output (4E) activations, and the (B, C) distances with the miner's masked copy (8B).
    """
    per_row = 2 * width + 8 * width + 4 * hidden + 4 * descriptor_dim + 8 * batch
    rows = int(free_bytes * fraction) // per_row // multiple * multiple
    return max(multiple, min(rows, most))


# On the CPU a chunk this size runs as fast as 65 536 rows (the pass is GEMM-bound) with 1/8 of the transient memory.
CPU_CHUNK_ROWS = 8192


def auto_chunk_rows(device: torch.device, batch: int, width: int, hidden: int, descriptor_dim: int) -> int:
    """Chunk rows for the bank pass from free memory: torch.cuda.mem_get_info on GPU, else ≤ CPU_CHUNK_ROWS."""
    if device.type == "cuda":
        return choose_chunk_rows(torch.cuda.mem_get_info(device)[0], batch, width, hidden, descriptor_dim)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min(CPU_CHUNK_ROWS, choose_chunk_rows(available, batch, width, hidden, descriptor_dim))


def _shared_name(path: Path | None, dist: Dist) -> Path:
    """Rank 0's `path` on every rank (its bytes all-gathered; the other ranks pass None)."""
    data = torch.tensor(list(str(path).encode()) if dist.is_main else [], dtype=torch.uint8, device=dist.device)
    return Path(bytes(dist.all_gather_cat(data).cpu().tolist()).decode())


def _write_runs(fd: int, offset: int, row_bytes: int, index: np.ndarray, rows: np.ndarray) -> None:
    """pwrite rows (b, F) fp16 at rows `index` (b,), one call per run of consecutive rows."""
    order = np.argsort(index, kind="stable")
    index, rows = index[order], rows[order]
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    for lo, hi in zip([0, *breaks], [*breaks, len(index)]):
        os.pwrite(fd, rows[lo:hi].tobytes(), offset + int(index[lo]) * row_bytes)


def write_bank(path: str | Path, header: BankHeader, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
               dist: Dist | None = None) -> Bank:
    """Write a bank from (row_index (b,) int64, rows (b, F)) batches, streamed to the file as they come.

    Under torchrun every rank passes the batches it computed (together covering every row exactly once) and
    writes them into the one file itself, so no rank holds more than a batch: memory is flat in N. Rank 0
    creates the file under a temporary name (`io.atomic_path`) that the others learn from it; it is renamed
    onto `path` only after every row is written, else removed.
    """
    path, dist = Path(path), dist or Dist()
    header_bytes = json.dumps(asdict(header)).encode()
    offset, row_bytes = _data_offset(header_bytes), header.width * 2
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(path)) if dist.is_main else None
        if dist.is_main:
            with open(tmp, "wb") as f:
                f.write(MAGIC + len(header_bytes).to_bytes(8, "little") + header_bytes)
                f.write(b"\0" * (offset - f.tell()))
                f.truncate(offset + header.n_rows * row_bytes)
        tmp = _shared_name(tmp, dist)
        dist.barrier()
        filled = np.zeros(header.n_rows, dtype=bool)
        fd = os.open(tmp, os.O_WRONLY)
        try:
            for index, rows in batches:
                if rows.ndim != 2 or rows.shape[1] != header.width or index.shape != rows.shape[:1]:
                    raise ValueError(f"expected index (b,) and rows (b, {header.width}), got "
                                     f"{tuple(index.shape)} and {tuple(rows.shape)}")
                index = index.cpu().numpy()
                if index.size and (index.min() < 0 or index.max() >= header.n_rows):
                    raise ValueError(f"bank {path}: row ids must lie in 0 … {header.n_rows - 1}")
                _write_runs(fd, offset, row_bytes, index, rows.detach().to("cpu", torch.float16).numpy())
                filled[index] = True
            os.fsync(fd)
        finally:
            os.close(fd)
        counts = dist.all_gather_cat(torch.tensor([int(filled.sum())], device=dist.device)).cpu()  # (W,)
        packed = torch.from_numpy(np.packbits(filled)).to(dist.device)
        union = dist.all_gather_cat(packed[None]).cpu().numpy()  # (W, ⌈N/8⌉)
        covered = np.unpackbits(np.bitwise_or.reduce(union, axis=0), count=header.n_rows).astype(bool)
        if not covered.all():
            missing = np.flatnonzero(~covered)
            raise ValueError(f"bank {path}: {missing.size} rows never written (first: {missing[:5].tolist()})")
        if int(counts.sum()) != header.n_rows:
            raise ValueError(f"bank {path}: {int(counts.sum()) - header.n_rows} rows written by two ranks")
    dist.barrier()  # rank 0 has renamed the file
    log.info("wrote bank %s: %d rows × %d (%s side)", path, header.n_rows, header.width, header.side)
    return Bank.open(path)
