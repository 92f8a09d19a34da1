"""`qkcopy bench --gpu-check`: one run that says where a GPU stands, meant to finish in minutes on one GPU.

Letters: N bank rows, B batch, D backbone dim, G gist256 dim, F = D + G row width, H hidden width, E descriptor
dim, C rows in one chunk.

Defaults (`GpuCheckConfig.paper`): bank passes at N = 1M and 10M, the steps at N = 1M, with the paper preset's
backbone (EfficientNet-B3 at 224 px, random weights: timing does not depend on them) under AMP. It measures:
- floors: device memory bandwidth (a large on-device copy: HBM on a GPU, RAM on a CPU), matmul throughput in
  float32 and in bf16 (tensor cores on a GPU);
- the bank pass per N over a device-resident fp16 bank (head over every row, distances, running top-k), in
  float32 (exact) and bf16, against N·F·2 bytes / bandwidth and its FLOPs / matmul peak, with its peak memory;
  a size that does not fit is reported as such and the check goes on;
- at the step size: the full-pass QK step and the SimCLR-style step (perf.steps, bank in host memory as in
  training), a run of QK steps with the exact bounded miner (perf.sequence), their peak memory;
- bulk embedding (`embed_paths` over JPEGs) against the bare model forward.
CI runs it at tiny sizes on the CPU (tests/perf/test_gpu_check.py), so that it cannot rot.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, replace

import torch

from qkcopy.config import load_config
from qkcopy.model.descriptor import Head
from qkcopy.perf.sequence import bounded_sequence
from qkcopy.perf.steps import (BenchConfig, embedding_throughput, head_flops_per_row, make_parts, qk_step,
                               simclr_step, timed)
from qkcopy.qk.bank import auto_chunk_rows
from qkcopy.qk.step import mine_hard_negatives


@dataclass(frozen=True)
class GpuCheckConfig:
    bench: BenchConfig  # device, batch, backbone, image size, hidden, repeats, embedding, sequence_steps
    pass_sizes: tuple[int, ...] = (1_000_000, 10_000_000)
    step_size: int = 1_000_000

    @classmethod
    def paper(cls, device: str = "cuda") -> GpuCheckConfig:
        """The paper preset's backbone, input size, head width and batch."""
        cfg = load_config("paper")
        return cls(BenchConfig(sizes=(1_000_000,), device=device, batch=cfg.data.batch_size,
                               image_size=cfg.model.image_size, backbone=cfg.model.backbone, hidden=cfg.model.hidden,
                               repeats=2, embed_images=256, workers=8, memory=False, sequence_steps=10))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def floors(device: torch.device, megabytes: int = 1024) -> dict:
    """On-device copy bandwidth (read + write bytes/s) and matmul FLOP/s in float32 and bf16."""
    src = torch.ones(megabytes << 18, device=device)  # megabytes MB of float32
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / statistics.median(timed([lambda: dst.copy_(src)], 5, device)[0])
    del src, dst
    n = 8192 if device.type == "cuda" else 1024
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        peaks[name] = 2 * n ** 3 / statistics.median(timed([lambda: a @ b], 5, device)[0])
    return dict(bandwidth_bytes_per_s=bandwidth, fp32_flop_per_s=peaks["fp32"], bf16_flop_per_s=peaks["bf16"])


def bank_pass(cfg: BenchConfig, n: int, feature_dim: int, floor: dict) -> dict:
    """The no-grad pass over an N-row fp16 bank held on the device, float32 and bf16, against the floors."""
    device, e = torch.device(cfg.device), 256
    width = feature_dim + e
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    try:
        rows = torch.empty(n, width, dtype=torch.float16, device=device)  # (N, F)
        for s in range(0, n, 1 << 20):
            rows[s:s + (1 << 20)] = torch.randn(min(1 << 20, n - s), width, generator=g, device=device)
    except torch.OutOfMemoryError:
        return dict(n=n, error=f"a {n:,}-row bank ({n * width * 2 / 1e9:.1f} GB) does not fit on {device}")
    head = Head(feature_dim, e, cfg.hidden).to(device)
    queries = torch.randn(cfg.batch, e, generator=g, device=device)  # (B, E)
    positives = torch.randperm(n, device="cpu")[:cfg.batch].to(device)
    chunk = auto_chunk_rows(device, cfg.batch, width, cfg.hidden, e)
    heads = {torch.float32: head, torch.bfloat16: copy.deepcopy(head).to(torch.bfloat16)}

    def run(dtype):
        chunks = ((s, rows[s:s + chunk].to(dtype)) for s in range(0, n, chunk))
        return lambda: mine_hard_negatives(queries, heads[dtype], chunks, feature_dim, positives, cfg.batch * 10)

    _peak_reset(device)
    fp32, bf16 = timed([lambda: run(torch.float32)(), lambda: run(torch.bfloat16)()], cfg.repeats, device)
    flops = n * (head_flops_per_row(head) + 2 * cfg.batch * e)
    fp32_s, bf16_s = statistics.median(fp32), statistics.median(bf16)
    result = dict(n=n, chunk_rows=chunk, bank_bytes=rows.numel() * 2, fp32_s=fp32_s, bf16_s=bf16_s,
                  over_bandwidth_floor=fp32_s * floor["bandwidth_bytes_per_s"] / (rows.numel() * 2),
                  fp32_over_flop_floor=fp32_s * floor["fp32_flop_per_s"] / flops,
                  bf16_over_flop_floor=bf16_s * floor["bf16_flop_per_s"] / flops, peak_bytes=_peak(device))
    del rows
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def steps(cfg: BenchConfig, n: int) -> dict:
    """Full-pass QK step vs SimCLR-style step, a run of bounded-miner QK steps, embedding vs bare forward."""
    device = torch.device(cfg.device)
    parts = make_parts(cfg, n, device)
    _peak_reset(device)
    qk, simclr = timed([qk_step(parts, device), simclr_step(parts, device)], cfg.repeats, device)
    peak_full = _peak(device)
    _peak_reset(device)
    sequence = bounded_sequence(parts, device, cfg.sequence_steps, cfg.seed + 1)
    peak_bounded = _peak(device)
    embed = embedding_throughput(cfg, parts, device)
    return dict(n=n, feature_dim=parts.q.head.feature_dim, qk_step_s=statistics.median(qk),
                simclr_step_s=statistics.median(simclr),
                qk_over_simclr=statistics.median(qk) / statistics.median(simclr),
                qk_peak_bytes=peak_full, sequence=sequence, bounded_peak_bytes=peak_bounded, embed=embed)


def run_gpu_check(cfg: GpuCheckConfig) -> dict:
    """Every measurement of the module docstring, as one JSON-ready dict, with the seconds each part took."""
    device = torch.device(cfg.bench.device)
    t0 = time.perf_counter()
    floor = floors(device)
    step = steps(replace(cfg.bench, sizes=(cfg.step_size,)), cfg.step_size)
    t1 = time.perf_counter()
    passes = [bank_pass(cfg.bench, n, step["feature_dim"], floor) for n in cfg.pass_sizes]
    _sync(device)
    machine = dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads())
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return dict(machine=machine, config=dict(backbone=cfg.bench.backbone, image_size=cfg.bench.image_size,
                                             batch=cfg.bench.batch, hidden=cfg.bench.hidden,
                                             pass_sizes=list(cfg.pass_sizes), step_size=cfg.step_size),
                floors=floor, passes=passes, steps=step,
                seconds=dict(floors_and_steps=t1 - t0, passes=time.perf_counter() - t1))


def _mb(x: int | None) -> str:
    return "–" if x is None else f"{x / 1e6:,.0f}"


def format_gpu_check(r: dict) -> str:
    """The check as Markdown tables; GB = 1e9 bytes, MB = 1e6 bytes."""
    f, m, c, s = r["floors"], r["machine"], r["config"], r["steps"]
    lines = [f"{m.get('gpu', m['device'])}, torch {m['torch']}; {c['backbone']} at {c['image_size']} px, batch "
             f"{c['batch']}, head H = {c['hidden']}; floors: copy {f['bandwidth_bytes_per_s'] / 1e9:,.0f} GB/s, "
             f"matmul fp32 {f['fp32_flop_per_s'] / 1e9:,.0f} GFLOP/s, bf16 {f['bf16_flop_per_s'] / 1e9:,.0f} GFLOP/s", "",
             "| bank pass N | GB | fp32 s | ÷ bandwidth floor | ÷ fp32 FLOP floor | bf16 s | ÷ bf16 FLOP floor "
             "| peak MB |", "|" + "---|" * 8]
    for p in r["passes"]:
        if "error" in p:
            lines.append(f"| {p['n']:,} | {p['error']} | | | | | | |")
            continue
        lines.append(f"| {p['n']:,} | {p['bank_bytes'] / 1e9:.1f} | {p['fp32_s']:.3f} | "
                     f"{p['over_bandwidth_floor']:.1f} | {p['fp32_over_flop_floor']:.2f} | {p['bf16_s']:.3f} | "
                     f"{p['bf16_over_flop_floor']:.2f} | {_mb(p['peak_bytes'])} |")
    q = s["sequence"]
    lines += ["", "| step, N = {:,} | s | ÷ SimCLR step | peak MB |".format(s["n"]), "|---|---|---|---|",
              f"| SimCLR-style | {s['simclr_step_s']:.3f} | 1.00 | – |",
              f"| QK, full pass (peak: with the SimCLR steps) | {s['qk_step_s']:.3f} | {s['qk_over_simclr']:.2f} | "
              f"{_mb(s['qk_peak_bytes'])} |",
              f"| QK, exact bounded miner ({q['steps']} steps, {q['full_passes']} full passes, "
              f"{100 * q['mean_fraction_evaluated']:.2f} % rows/step, same negatives as the full pass on "
              f"{q['equal_to_full_pass']}/{q['steps']} steps) | {q['qk_bounded_step_s']:.3f} | "
              f"{q['qk_bounded_over_simclr']:.2f} | {_mb(s['bounded_peak_bytes'])} |",
              "", f"embedding {s['embed']['images']} JPEGs: {s['embed']['embed_images_per_s']:.0f} img/s through "
              f"embed_paths, {s['embed']['forward_images_per_s']:.0f} img/s bare forward "
              f"({s['embed']['embed_images_per_s'] / s['embed']['forward_images_per_s']:.2f}×)",
              f"seconds: floors and steps {r['seconds']['floors_and_steps']:.0f}, bank passes "
              f"{r['seconds']['passes']:.0f}"]
    return "\n".join(lines)
