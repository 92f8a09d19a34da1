"""`qkcopy bench`: what a QK step costs against a SimCLR-style step, and the bank pass against its floors.

Letters: B batch, N bank rows, F bank row width, W world size.

Everything is measured in one run, so ratios compare like with like on a machine shared with other work
(and the steps being compared alternate, so that a change in load falls on both):
- the machine's floors: memory bandwidth (a large tensor copy; host→device for a GPU, since the bank lives
  in host memory) and fp32 GEMM throughput (a large matmul);
- per bank size N: the bank pass (head over all N rows, distances, running top-k, no grad) against
  N·F·2 bytes / bandwidth and its GEMM FLOPs / peak, and with bf16 compute instead of fp16 rows cast to
  fp32 per chunk; a QK step (trained model forward, `colearn_loss`, backward, Adam), the same with the
  no-grad pass in bf16 (`sharded_colearn_loss(mining_head=…)`), and a SimCLR-style step (both models
  forward and backward); the bytes autograd keeps for backward inside `colearn_loss`; the peak memory of a
  step (VmHWM in a fresh process per size on the CPU, torch.cuda.max_memory_allocated on a GPU);
- bulk embedding (`embed_paths` over JPEGs written to a temporary folder) against the bare model forward;
- optionally the sharded step (`distributed.sharded_colearn_loss`) under W gloo processes on the CPU.
The pieces are in `qkcopy.bench_steps`.
"""

from __future__ import annotations

import os
import socket
import statistics
from dataclasses import asdict

import torch
import torch.multiprocessing as mp

from qkcopy.perf.steps import (BenchConfig, bank_pass, embedding_throughput, head_flops_per_row, make_parts,
                                memory_bandwidth, peak_flops, qk_step, saved_for_backward_bytes, simclr_step,
                                step_memory, timed)
from qkcopy.distributed import init, shard_range
from qkcopy.perf.sequence import bounded_sequence
from qkcopy.qk.bank import BankShard
from qkcopy.qk.step import colearn_loss
from qkcopy.qk.loss import LossConfig

__all__ = ["BenchConfig", "format_tables", "head_flops_per_row", "run_bench"]


def _memory_worker(cfg: BenchConfig, n: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    queue.put(step_memory(cfg, n))


def memory_in_fresh_process(cfg: BenchConfig, n: int) -> dict:
    """`step_memory` in a new process, so that the max-RSS high-water mark belongs to this size alone."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    proc = ctx.Process(target=_memory_worker, args=(cfg, n, torch.get_num_threads(), queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"memory benchmark process for N={n} failed (exit code {proc.exitcode})")
    return queue.get()


def _world_worker(rank: int, world: int, port: int, cfg: BenchConfig, n: int, threads: int, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist = init("cpu")
    parts = make_parts(cfg, 0, dist.device)
    start, stop = shard_range(n, dist.rank, dist.world)
    g = torch.Generator().manual_seed(cfg.seed + rank)
    rows = torch.randn(stop - start, parts.bank.header.width, generator=g).half()  # (N/W, F) this shard only
    lo, hi = shard_range(cfg.batch, dist.rank, dist.world)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[lo:hi]  # global positive rows
    params = [*parts.q.parameters(), *parts.k.head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4)
    shard = BankShard(rows, start, parts.bank.header.feature_dim, parts.chunk_rows, dist.device)

    def step():
        desc = parts.q(parts.pixels[lo:hi], parts.g256[lo:hi])  # (b, E)
        result = colearn_loss(desc, index, parts.k.head, shard, LossConfig(), dist)
        opt.zero_grad(set_to_none=True)
        result.loss.total.backward()
        dist.all_reduce_mean_grads(params)
        opt.step()
        dist.barrier()

    times = timed([step], cfg.repeats, dist.device)[0]
    if dist.is_main:
        queue.put(dict(world=world, n=n, threads_per_rank=threads, step_s=statistics.median(times), times=times))
    dist.close()


def world_scaling(cfg: BenchConfig, world: int, n: int) -> dict:
    """The sharded QK step under `world` gloo processes, sharing this process's threads among them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    threads = max(1, torch.get_num_threads() // world)
    mp.spawn(_world_worker, args=(world, port, cfg, n, threads, queue), nprocs=world, join=True)
    return queue.get()


def run_bench(cfg: BenchConfig) -> dict:
    """Every measurement of the module docstring, as one JSON-ready dict."""
    if not cfg.sizes or min(cfg.sizes) < cfg.batch:
        raise ValueError(f"bench sizes must be at least the batch ({cfg.batch}), got {list(cfg.sizes)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or threads)
    try:
        return _measure(cfg, torch.device(cfg.device))
    finally:
        torch.set_num_threads(threads)


def _measure(cfg: BenchConfig, device: torch.device) -> dict:
    machine = dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                   cpus=os.cpu_count(), load_before=os.getloadavg(),
                   malloc_env={k: v for k, v in os.environ.items() if k.startswith("MALLOC_")})
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    bandwidth, peak = memory_bandwidth(device), peak_flops(device)
    rows = []
    for n in sorted(cfg.sizes):
        parts = make_parts(cfg, n, device)
        with torch.no_grad():
            queries = parts.q(parts.pixels, parts.g256).float()  # (B, E)
        row = dict(n=n, chunk_rows=parts.chunk_rows)
        if cfg.full_pass:
            row.update(_full_pass_figures(cfg, parts, queries, device, bandwidth, peak))
        if cfg.sequence_steps:
            row["sequence"] = bounded_sequence(parts, device, cfg.sequence_steps, cfg.seed + 1)
        if cfg.memory:
            del parts
            row.update({k: v for k, v in (memory_in_fresh_process(cfg, n) if device.type == "cpu"
                                         else step_memory(cfg, n)).items() if k != "n"})
        rows.append(row)
    embed = embedding_throughput(cfg, make_parts(cfg, cfg.batch, device), device)
    world = [world_scaling(cfg, w, max(cfg.sizes)) for w in cfg.world]
    machine["load_after"] = os.getloadavg()
    return dict(config={**asdict(cfg), "sizes": list(cfg.sizes), "world": list(cfg.world)}, machine=machine,
                floors=dict(bandwidth_bytes_per_s=bandwidth, fp32_flop_per_s=peak), sizes=rows,
                embed=embed, world=world)


def _full_pass_figures(cfg: BenchConfig, parts, queries: torch.Tensor, device: torch.device, bandwidth: float,
                       peak: float) -> dict:
    """The bank pass against its floors, and the full-pass QK steps (fp32, bf16 mining) against SimCLR."""
    n = len(parts.bank)
    head = parts.k.head
    bank_bytes = parts.bank.rows.numel() * 2
    flops = n * (head_flops_per_row(head) + 2 * cfg.batch * head.descriptor_dim)
    fp32, bf16 = timed([bank_pass(parts, queries, device), bank_pass(parts, queries, device, torch.bfloat16)],
                       cfg.repeats, device)
    pass_s = statistics.median(fp32)
    qk, qk_bf16, simclr = timed([qk_step(parts, device), qk_step(parts, device, mining_dtype=torch.bfloat16),
                                 simclr_step(parts, device)], cfg.repeats, device)
    return dict(bank_bytes=bank_bytes, bank_pass_s=pass_s, bank_pass_bf16_s=statistics.median(bf16),
                bandwidth_floor_s=bank_bytes / bandwidth, flop_floor_s=flops / peak,
                over_bandwidth_floor=pass_s * bandwidth / bank_bytes, over_flop_floor=pass_s * peak / flops,
                qk_step_s=statistics.median(qk), qk_bf16_mining_step_s=statistics.median(qk_bf16),
                simclr_step_s=statistics.median(simclr), qk_times=qk, qk_bf16_mining_times=qk_bf16,
                simclr_times=simclr, qk_over_simclr=statistics.median(a / b for a, b in zip(qk, simclr)),
                qk_bf16_mining_over_simclr=statistics.median(a / b for a, b in zip(qk_bf16, simclr)),
                saved_for_backward_bytes=saved_for_backward_bytes(parts, device))


def format_tables(result: dict) -> str:
    """The measurements as plain-text (Markdown) tables; GB = 1e9 bytes, MB = 1e6 bytes."""
    f, m, e = result["floors"], result["machine"], result["embed"]
    lines = [f"device {m['device']}, {m['threads']} threads; load {m['load_before'][0]:.1f} before, "
             f"{m['load_after'][0]:.1f} after; copy bandwidth {f['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, "
             f"fp32 matmul {f['fp32_flop_per_s'] / 1e9:.0f} GFLOP/s", ""]
    full = [r for r in result["sizes"] if "bank_pass_s" in r]
    if full:
        lines += ["| N | chunk | bank pass s | ÷ bandwidth floor | ÷ FLOP floor | bf16 pass s | kept for backward MB "
                  "| step peak MB |", "|" + "---|" * 8]
    for r in full:
        peak = f"{r['step_peak_bytes'] / 1e6:.0f}" if "step_peak_bytes" in r else "–"
        lines.append(f"| {r['n']:,} | {r['chunk_rows']} | {r['bank_pass_s']:.2f} | {r['over_bandwidth_floor']:.0f} | "
                     f"{r['over_flop_floor']:.2f} | {r['bank_pass_bf16_s']:.2f} | "
                     f"{r['saved_for_backward_bytes'] / 1e6:.1f} | {peak} |")
    lines += ["", "| N | QK step s | QK step, bf16 mining s | SimCLR step s | QK/SimCLR | QK bf16 mining/SimCLR |",
              "|" + "---|" * 6] if full else []
    lines += [f"| {r['n']:,} | {r['qk_step_s']:.2f} | {r['qk_bf16_mining_step_s']:.2f} | {r['simclr_step_s']:.2f} "
              f"| {r['qk_over_simclr']:.2f} | {r['qk_bf16_mining_over_simclr']:.2f} |" for r in full]
    seq = [(r["n"], r["sequence"], r.get("step_peak_bytes")) for r in result["sizes"] if "sequence" in r]
    if seq:
        lines += ["", "| N | steps | full passes | rows evaluated per step | QK step, exact bounded mining s "
                  "| SimCLR step s | QK bounded/SimCLR | step peak MB |", "|" + "---|" * 8]
        lines += [f"| {n:,} | {s['steps']} | {s['full_passes']} | {100 * s['mean_fraction_evaluated']:.2f} % "
                  f"| {s['qk_bounded_step_s']:.2f} | {s['simclr_step_s']:.2f} | {s['qk_bounded_over_simclr']:.2f} "
                  f"| {'–' if peak is None else f'{peak / 1e6:.0f}'} |" for n, s, peak in seq]
        warm = [(n, s) for n, s, _ in seq if s["steps"] > 1]
        lines += ["", "| N | after the first step (cold cache): steps | full passes | rows evaluated per step "
                  "| QK bounded/SimCLR |", "|---|---|---|---|---|"] if warm else []
        for n, s in warm:
            q, c, f = s["qk_bounded_times"][1:], s["simclr_times"][1:], s["fractions_evaluated"][1:]
            lines.append(f"| {n:,} | {len(q)} | {sum(x == 1.0 for x in f)} | {100 * min(f):.3f}–{100 * max(f):.3f} % "
                         f"| {sum(q) / sum(c):.3f} |")
    lines += ["", f"embedding {e['images']} JPEGs: {e['embed_images_per_s']:.1f} img/s through embed_paths, "
              f"{e['forward_images_per_s']:.1f} img/s bare model forward (batch {result['config']['batch']})"]
    if result["world"]:
        lines += ["", "| W (gloo processes) | threads per rank | sharded step s | speed-up |", "|---|---|---|---|"]
        base = result["world"][0]["step_s"]
        lines += [f"| {w['world']} | {w['threads_per_rank']} | {w['step_s']:.2f} | {base / w['step_s']:.2f} |"
                  for w in result["world"]]
    return "\n".join(lines)
