"""The timed pieces of `qkcopy bench`: machine floors, a synthetic bank, the QK and SimCLR-style steps.

Letters: B batch, N bank rows, C rows in one chunk, D backbone dim, G gist256 dim, F = D + G bank row width,
H head hidden width, E descriptor dim, M hard negatives per positive, S input size in pixels.

Weights are random (timing does not depend on them); gist256 inputs are random vectors; the bank is an
in-memory fp16 (N, F) tensor behind the real `Bank` class, as a memory-mapped file is once in the page cache.
"""

from __future__ import annotations

import copy
import ctypes
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from qkcopy.qk.bank import Bank, BankHeader
from qkcopy.device import autocast
from qkcopy.qk.bank import auto_chunk_rows
from qkcopy.qk.step import colearn_loss, mine_hard_negatives
from qkcopy.training.methods import simclr_loss
from qkcopy.qk.loss import LossConfig
from qkcopy.model.descriptor import DescriptorModel, ModelConfig, build_qk_models


@dataclass(frozen=True)
class BenchConfig:
    sizes: tuple[int, ...] = (10_000, 100_000)
    device: str = "cpu"
    batch: int = 32
    image_size: int = 128
    backbone: str = "efficientnet_lite0"
    hidden: int = 1024
    chunk_rows: int = 0  # 0: distributed.auto_chunk_rows
    repeats: int = 2  # timed runs after one warm-up; the median is reported
    embed_images: int = 128
    workers: int = 2  # image-decoding processes for the embedding benchmark
    memory: bool = True  # peak memory per size (a fresh process per size on the CPU)
    world: tuple[int, ...] = ()  # gloo process counts for the sharded-step scaling; () skips it
    threads: int = 0  # torch threads; 0 keeps torch's default
    full_pass: bool = True  # time the bank pass and the full-pass QK steps (slow at 1M rows on a CPU)
    sequence_steps: int = 20  # bounded-miner QK steps vs SimCLR-style steps in a run (perf.sequence); 0 skips
    seed: int = 0


@dataclass
class Parts:
    """The models, one synthetic bank and one batch of a benchmark size."""

    q: DescriptorModel  # trained side in the QK step; SimCLR's query model
    k: DescriptorModel  # its head is the QK step's frozen-side head; SimCLR's key model
    bank: Bank
    pixels: torch.Tensor  # (B, 3, S, S)
    g256: torch.Tensor  # (B, G)
    index: torch.Tensor  # (B,) positive rows
    chunk_rows: int


def timed(fns: list[Callable[[], object]], repeats: int, device: torch.device) -> list[list[float]]:
    """Seconds of `repeats` calls of each function after one untimed warm-up call each; the functions'
    runs alternate, so that a change in the machine's load falls on all of them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats + 1):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r > 0:
                out.append(time.perf_counter() - t0)
    return times


def memory_bandwidth(device: torch.device, megabytes: int = 256) -> float:
    """Bytes/s the bank can be read at: a host→device copy from pinned memory on a GPU, else a RAM copy
    (read + write traffic)."""
    n = megabytes << 20
    if device.type == "cuda":
        src, dst = torch.empty(n, dtype=torch.uint8).pin_memory(), torch.empty(n, dtype=torch.uint8, device=device)
        return n / statistics.median(timed([lambda: dst.copy_(src, non_blocking=True)], 5, device)[0])
    src = torch.ones(n // 4)
    dst = torch.empty_like(src)
    return 2 * n / statistics.median(timed([lambda: dst.copy_(src)], 5, device)[0])


def peak_flops(device: torch.device) -> float:
    """fp32 matmul FLOP/s of an n × n × n product."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / statistics.median(timed([lambda: a @ b], 5, device)[0])


def head_flops_per_row(head: torch.nn.Module) -> int:
    """Multiply-adds × 2 of the head for one bank row (every Linear layer)."""
    return sum(2 * m.in_features * m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear))


def make_parts(cfg: BenchConfig, n: int, device: torch.device) -> Parts:
    q, k = build_qk_models(ModelConfig(cfg.backbone, weights=None, image_size=cfg.image_size,
                                       hidden=cfg.hidden), cfg.seed)
    q, k = q.to(device).train(), k.to(device).train()
    feature_dim, e = q.head.feature_dim, q.head.descriptor_dim
    g = torch.Generator().manual_seed(cfg.seed)
    rows = torch.empty(n, feature_dim + e, dtype=torch.float16)  # (N, F) the fp16 bank, filled in slices
    for s in range(0, n, 4096):
        rows[s:s + 4096] = torch.randn(min(4096, n - s), feature_dim + e, generator=g).half()
    bank = Bank(Path("bench-bank"), BankHeader(n, feature_dim, e, "bench", "bench", "K"), rows)
    chunk_rows = cfg.chunk_rows or auto_chunk_rows(device, cfg.batch, feature_dim + e, cfg.hidden, e)
    pixels = torch.rand(cfg.batch, 3, cfg.image_size, cfg.image_size, generator=g).to(device)
    index = torch.randperm(n, generator=g)[:cfg.batch].to(device)
    return Parts(q, k, bank, pixels, torch.randn(cfg.batch, e, generator=g).to(device), index, chunk_rows)


def bank_pass(parts: Parts, queries: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32,
              m: int = LossConfig.negatives_per_positive) -> Callable[[], object]:
    """Head over all N rows (fp16 rows cast to `dtype` per chunk), distances to the batch, top-(B·M)."""
    head = parts.k.head if dtype == torch.float32 else copy.deepcopy(parts.k.head).to(dtype)
    rows, c, f = parts.bank.rows, parts.chunk_rows, parts.bank.header.feature_dim

    def run():
        chunks = ((s, rows[s:s + c].to(device, non_blocking=True).to(dtype)) for s in range(0, len(rows), c))
        return mine_hard_negatives(queries, head, chunks, f, parts.index, len(queries) * m)
    return run


def qk_step(parts: Parts, device: torch.device, cfg: LossConfig = LossConfig(),
            mining_dtype: torch.dtype = torch.float32) -> Callable[[], object]:
    """One training step of the trained side against the whole bank (the frozen side's head trained too).

    float32: `colearn_loss`, exact. bfloat16: the no-grad pass over the bank with a bf16 copy of the head
    refreshed every step (`colearn_loss(mining_head=…)`); loss and grads in fp32.
    """
    opt = torch.optim.Adam([*parts.q.parameters(), *parts.k.head.parameters()], lr=1e-4)
    head = parts.k.head
    shard = parts.bank.shard(0, 1, parts.chunk_rows, device, mining_dtype)
    mining = None if mining_dtype == torch.float32 else copy.deepcopy(head).requires_grad_(False).to(mining_dtype)

    def step():
        with autocast(device):
            desc = parts.q(parts.pixels, parts.g256)  # (B, E)
        if mining is not None:
            mining.load_state_dict(head.state_dict())  # cast copy of this step's weights
        result = colearn_loss(desc.float(), parts.index, head, shard, cfg, mining_head=mining)
        opt.zero_grad(set_to_none=True)
        result.loss.total.backward()
        opt.step()
    return step


def simclr_step(parts: Parts, device: torch.device, cfg: LossConfig = LossConfig()) -> Callable[[], object]:
    """Both models forward and backward on the same batch, negatives from the batch (`simclr_loss`)."""
    opt = torch.optim.Adam([*parts.q.parameters(), *parts.k.parameters()], lr=1e-4)
    originals = parts.pixels.flip(3)

    def step():
        with autocast(device):
            queries, keys = parts.q(parts.pixels, parts.g256), parts.k(originals, parts.g256)  # (B, E) each
        result = simclr_loss(queries.float(), keys.float(), cfg)
        opt.zero_grad(set_to_none=True)
        result.loss.total.backward()
        opt.step()
    return step


def saved_for_backward_bytes(parts: Parts, device: torch.device) -> int:
    """Bytes of activations autograd keeps for backward inside `colearn_loss` (parameters not counted)."""
    params = {p.untyped_storage().data_ptr() for p in [*parts.q.parameters(), *parts.k.parameters()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    desc = parts.q(parts.pixels, parts.g256).float().detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        colearn_loss(desc, parts.index, parts.k.head, parts.bank.shard(0, 1, parts.chunk_rows, device),
                     LossConfig())
    return sum(seen.values())


def step_memory(cfg: BenchConfig, n: int) -> dict:
    """Peak memory of one QK step (Adam state included) above what the process held before it."""
    device = torch.device(cfg.device)
    parts = make_parts(cfg, n, device)
    step = qk_step(parts, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        return dict(n=n, before_bytes=before, step_peak_bytes=torch.cuda.max_memory_allocated(device) - before)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so that RSS counts live memory only
    before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # resident now
    try:  # reset the high-water mark to the current RSS (Linux ≥ 4.0), so that setup's peaks do not count
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    step()
    # VmHWM, not getrusage's ru_maxrss: after spawn's fork + exec, ru_maxrss keeps the parent's RSS at the fork
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    return dict(n=n, before_bytes=before, step_peak_bytes=peak - before, high_water_reset=reset)


def write_jpegs(folder: Path, n: int, seed: int, size: tuple[int, int] = (480, 360)) -> list[Path]:
    """n photo-sized JPEGs (a colour gradient with ellipses and boxes) in `folder`."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    paths = []
    for i in range(n):
        mask = Image.linear_gradient("L").resize(size)
        img = Image.composite(*(Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
                                for _ in range(2)), mask)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.randrange(size[0] - 60), rng.randrange(size[1] - 60)
            box = (x, y, x + rng.randrange(20, 60), y + rng.randrange(20, 60))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(rng.randrange(256)
                                                                                   for _ in range(3)))
        paths.append(folder / f"bench{i:05d}.jpg")
        img.save(paths[-1], quality=90)
    return paths


def embedding_throughput(cfg: BenchConfig, parts: Parts, device: torch.device) -> dict:
    """Images/s of `embed_paths` over JPEGs on disk (decode, resize, GIST, model) against the bare forward."""
    import numpy as np

    from qkcopy.model.gist256 import Gist256
    from qkcopy.model.inference import embed_paths
    from qkcopy.model.pca import PCA

    g = torch.Generator().manual_seed(cfg.seed)
    basis = torch.linalg.qr(torch.randn(960, 256, generator=g))[0].T.numpy()  # (256, 960) orthonormal rows
    gist256 = Gist256(PCA(np.zeros(960, np.float32), basis.astype(np.float32), np.ones(256, np.float32)))
    def forward() -> float:  # seconds of one bare forward of a batch (median)
        parts.q.eval()
        with torch.no_grad(), autocast(device):
            seconds = statistics.median(timed([lambda: parts.q(parts.pixels, parts.g256)], cfg.repeats, device)[0])
        parts.q.train()
        return seconds

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), cfg.embed_images, cfg.seed)
        before = forward()  # the bare forward is timed before and after the embedding run, so that a change
        t0 = time.perf_counter()  # in the machine's load falls on both sides of the ratio
        out = embed_paths(parts.q, gist256, paths, cfg.image_size, batch_size=cfg.batch, workers=cfg.workers,
                          device=device, desc="bench embed")
        seconds = time.perf_counter() - t0
        after = forward()
    return dict(images=len(out.ids), embed_images_per_s=len(out.ids) / seconds,
                forward_images_per_s=2 * cfg.batch / (before + after))
