"""Writing a bank for `qkcopy bench --bank-write N…`: peak memory and rate of `qk.bank.write_bank` streaming.

Letters: N bank rows, b rows per batch, F = D + G bank row width.

Each size runs in a fresh process (spawn) that writes N synthetic fp16 rows (row i filled with i mod 2048, so
that producing them costs nothing) in batches of b, as `training.loop.build_bank` hands them over, into a file
in `folder`, then checks a few rows and deletes the file. Memory is the process's resident-set high-water mark
(VmHWM, reset just before) above its resident size at that point: what the writer itself holds, the page
cache of the written file not included (the rows go out with pwrite, never through a mapping).
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from qkcopy.qk.bank import Bank, BankHeader, write_bank


def _resident() -> tuple[int, int]:
    status = Path("/proc/self/status").read_text()
    kib = [int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) * 1024 for key in ("VmRSS", "VmHWM")]
    return kib[0], kib[1]


def _write(n: int, width: int, batch_rows: int, folder: str, queue) -> None:
    torch.set_num_threads(1)
    header = BankHeader(n_rows=n, feature_dim=width - 256, gist_dim=256, model_hash="bench", data_hash="bench",
                        side="K")

    def batches():
        for s in range(0, n, batch_rows):
            index = torch.arange(s, min(s + batch_rows, n))  # (b,)
            yield index, (index % 2048).to(torch.float16)[:, None].expand(-1, width)  # (b, F) fp16

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        before, _ = _resident()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM ← VmRSS
        except OSError:
            pass
        t0 = time.perf_counter()
        write_bank(Path(tmp) / "bench.bank", header, batches())
        seconds = time.perf_counter() - t0
        _, peak = _resident()
        bank = Bank.open(Path(tmp) / "bench.bank")
        probe = torch.tensor([0, n // 2, n - 1])
        ok = bool((bank.take(probe) == (probe % 2048).float()[:, None]).all())
        size = (Path(tmp) / "bench.bank").stat().st_size
        del bank
    queue.put(dict(n=n, batch_rows=batch_rows, file_bytes=size, seconds=seconds, bytes_per_s=size / seconds,
                   resident_before_bytes=before, peak_above_before_bytes=peak - before, rows_checked=ok))


def bank_write(n: int, folder: str | Path, width: int = 1536, batch_rows: int = 4096) -> dict:
    """Stream an N-row bank to a file in `folder` in a fresh process; its time, rate and peak memory."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    proc = ctx.Process(target=_write, args=(n, width, batch_rows, str(folder), queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"bank-writing benchmark process for N={n} failed (exit code {proc.exitcode})")
    return queue.get()
