"""`qkcopy bench`: QK step vs SimCLR step, bank pass vs its bandwidth and FLOP floors, memory, embedding."""

from __future__ import annotations

import argparse
from pathlib import Path
from qkcopy.io import atomic_write_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time a QK step against SimCLR and the bank pass against its floors",
                       description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", help="bank sizes N [10000 100000; --gpu-check: 1000000 "
                                                      "10000000, the steps at the first]")
    p.add_argument("--device", default="cpu", help="cpu or cuda [cpu]")
    p.add_argument("--batch", type=int, help="batch size B [32]")
    p.add_argument("--image-size", type=int, help="model input size in pixels [128; --gpu-check: the paper's]")
    p.add_argument("--backbone", help="timm backbone [efficientnet_lite0; --gpu-check: the paper's]")
    p.add_argument("--chunk-rows", type=int, default=0, help="bank rows per chunk; 0 picks from free memory [0]")
    p.add_argument("--repeats", type=int, help="timed runs after one warm-up [2]")
    p.add_argument("--embed-images", type=int, help="JPEGs for the embedding benchmark [128; --gpu-check: 256]")
    p.add_argument("--workers", type=int, help="image-decoding processes [2; --gpu-check: 8]")
    p.add_argument("--threads", type=int, default=0, help="torch threads (1 gives steadier figures on a busy "
                                                          "machine); 0 keeps torch's default [0]")
    p.add_argument("--no-memory", action="store_true", help="skip the per-size peak memory runs")
    p.add_argument("--no-full-pass", action="store_true", help="skip the bank pass and full-pass QK step timings")
    p.add_argument("--sequence-steps", type=int, help="QK steps with the exact bounded miner, alternating with "
                                                       "SimCLR-style steps; 0 skips [20; --gpu-check: 10]")
    p.add_argument("--world", type=int, nargs="*", default=[], help="also time the sharded step under these "
                                                                    "numbers of gloo processes, e.g. 1 2")
    p.add_argument("--gpu-check", action="store_true", help="only this: the GPU check (perf.gpu_check): bank "
                   "passes vs HBM and tensor-core floors, QK vs SimCLR steps with the paper's backbone under AMP, "
                   "embedding vs forward, peak memory; the options above shrink it (CI runs it on the CPU)")
    p.add_argument("--bank-write", type=int, nargs="+", metavar="N",
                   help="only this: stream banks of N synthetic rows to a file, time and peak memory per size")
    p.add_argument("--bank-dir", type=Path, help="folder for the --bank-write files [the system's temporary folder]")
    p.add_argument("--out", type=Path, help="write the measurements as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qkcopy.perf.runner import BenchConfig, format_tables, run_bench

    if args.bank_write:
        return _bank_write(args)
    if args.gpu_check:
        return _gpu_check(args)
    cfg = BenchConfig(sizes=tuple(args.sizes or (10_000, 100_000)), device=args.device, batch=args.batch or 32,
                      image_size=args.image_size or 128, backbone=args.backbone or "efficientnet_lite0",
                      chunk_rows=args.chunk_rows, repeats=_given(args.repeats, 2),
                      embed_images=_given(args.embed_images, 128), workers=_given(args.workers, 2),
                      memory=not args.no_memory, world=tuple(args.world), threads=args.threads,
                      full_pass=not args.no_full_pass, sequence_steps=_given(args.sequence_steps, 20))
    result = run_bench(cfg)
    print(format_tables(result))
    return _save(args.out, result)


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def _bank_write(args: argparse.Namespace) -> int:
    import tempfile

    from qkcopy.perf.bank_write import bank_write

    folder = args.bank_dir or Path(tempfile.gettempdir())
    if not folder.is_dir():
        raise FileNotFoundError(f"--bank-dir {folder} is not a folder")
    rows = [bank_write(n, folder) for n in args.bank_write]
    print("| N rows | file GB | write s | MB/s | resident before MB | peak above that MB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['file_bytes'] / 1e9:.2f} | {r['seconds']:.1f} | {r['bytes_per_s'] / 1e6:.0f} | "
              f"{r['resident_before_bytes'] / 1e6:.0f} | {r['peak_above_before_bytes'] / 1e6:.0f} |")
    if args.out is not None:
        atomic_write_json(args.out, dict(bank_write=rows))
        print(f"measurements → {args.out}")
    return 0


def _gpu_check(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from qkcopy.perf.gpu_check import GpuCheckConfig, format_gpu_check, run_gpu_check

    cfg = GpuCheckConfig.paper(args.device)
    given = {k: v for k, v in dict(batch=args.batch, image_size=args.image_size, backbone=args.backbone,
                                   embed_images=args.embed_images, workers=args.workers,
                                   sequence_steps=args.sequence_steps, repeats=args.repeats,
                                   chunk_rows=args.chunk_rows or None).items() if v is not None}
    cfg = dataclasses.replace(cfg, bench=dataclasses.replace(cfg.bench, **given))
    if args.sizes:
        cfg = dataclasses.replace(cfg, pass_sizes=tuple(args.sizes), step_size=args.sizes[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        result = run_gpu_check(cfg)
    finally:
        torch.set_num_threads(threads)
    print(format_gpu_check(result))
    return _save(args.out, result)


def _save(out, result: dict) -> int:
    if out is not None:
        atomic_write_json(out, result)
        print(f"measurements → {out}")
    return 0
