"""`qkcopy bench-serve`: the figures of the matching service (a benchmark, not a test; numbers in RESULTS).

- index: for each size N, synthetic descriptors (Gaussian, E=256; the index part only) in a flat and an IVF
  index: single-query search latency p50/p99 on one thread, IVF recall@10 against the flat result, bytes.
- store: the same N through the collection: ingestion rate into SQLite, start-up by rebuild from the
  database, snapshot write, start-up from the snapshot.
- real: IVF recall@10 against exact search on real descriptors (K of `--images`, queried with Q).
- service: a real `qkcopy serve` process (uvicorn, one torch thread) on 127.0.0.1 over N synthetic + real
  references, for each vector store asked for (faiss: flat, IVF, IVF with onnxruntime; Milvus: its index): p50/p99 of /v1/match for one 512-px JPEG, throughput with 1, 8 and 32 concurrent clients,
  POST /v1/references ingestion, resident memory. Every load loop is bounded in count and time.

Letters: N references, E descriptor dim, k neighbours.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

E = 256


def pct(xs, p) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, p))  # ms


def synthetic(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, E)).astype(np.float32)  # (N, E)


def _latency(index, queries: np.ndarray, k: int = 10, params=None) -> tuple[list[float], np.ndarray]:
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        _, i = index.search(q[None], k, params=params)
        times.append(time.perf_counter() - t)
        ids.append(i[0])
    return times, np.stack(ids)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found.tolist(), exact.tolist())]))


def bench_index(n: int, nlist: int, nprobes=(16, 64), n_queries: int = 200) -> dict:
    x = synthetic(n)
    rng = np.random.default_rng(1)
    queries = x[rng.choice(n, n_queries, replace=False)] + 0.3 * rng.normal(size=(n_queries, E)).astype(np.float32)
    flat = faiss.IndexFlatL2(E)
    flat.add(x)
    times, exact = _latency(flat, queries)
    out = dict(n=n, flat=dict(p50_ms=pct(times, 50), p99_ms=pct(times, 99), bytes=int(x.nbytes)))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(E), E, nlist)
    t = time.perf_counter()
    ivf.train(x)
    out["ivf"] = dict(nlist=nlist, train_s=time.perf_counter() - t)
    ivf.add(x)
    for nprobe in nprobes:
        times, found = _latency(ivf, queries, params=faiss.SearchParametersIVF(nprobe=nprobe))
        out["ivf"][f"nprobe{nprobe}"] = dict(p50_ms=pct(times, 50), p99_ms=pct(times, 99),
                                             recall10_vs_exact=recall_at_k(found, exact))
    return out


def bench_store(n: int, root: Path, fingerprint: str = "synthetic", batch: int = 2000, vectors: str = "faiss") -> dict:
    """N synthetic references added through the collection (`vectors`: its store), rebuilt, snapshotted, reopened."""
    from qkcopy.collection import Collection, NewRef

    x = synthetic(n, seed=2)
    t = time.perf_counter()
    with Collection.create(root, fingerprint, E, vectors=vectors) as coll:
        for s in range(0, n, batch):
            coll.add([NewRef(f"s{i}.jpg", f"synthetic-{i}", "synthetic", {}, x[i]) for i in range(s, min(n, s + batch))])
    ingest = time.perf_counter() - t
    with Collection.open(root) as coll:
        t = time.perf_counter()
        coll.index()
        rebuild = time.perf_counter() - t
        t = time.perf_counter()
        coll.snapshot()
        snap = time.perf_counter() - t
    with Collection.open(root) as coll:
        t = time.perf_counter()
        coll.index()
        reopen = time.perf_counter() - t
    return dict(n=n, ingest_rows_per_s=n / ingest, rebuild_from_db_s=rebuild, snapshot_s=snap,
                start_from_snapshot_s=reopen, db_bytes=(root / "collection.db").stat().st_size)


def reindex(root: Path, nlist: int, nprobe: int) -> None:
    from qkcopy.collection import Collection

    with Collection.open(root) as coll:
        coll.reindex("ivf", nlist=nlist, nprobe=nprobe)


def bench_real_ivf(trained, ref_paths, query_paths, cache: Path, threshold: float | None = None,
                   nprobes=(8, 16, 32, 64, 128)) -> dict:
    """IVF vs exact recall@10 on real descriptors (kept in `cache`/real-*.npy for reruns); with a threshold,
    also how often IVF returns the exact top-1 of the queries whose exact top-1 is a copy (score >= it)."""
    from qkcopy.retrieval.faiss_index import default_nlist

    from qkcopy.io import files_fingerprint

    key = files_fingerprint([*ref_paths, *query_paths])  # the model and the exact image sets
    files = [cache / f"real-{side}-{trained.fingerprint}-{key}.npy" for side in ("references", "queries")]
    if not all(f.is_file() for f in files):
        for f, side, paths, desc in zip(files, ("reference", "query"), (ref_paths, query_paths),
                                        ("references (K)", "queries (Q)")):
            np.save(f, trained.describe(side, paths, 64, 2, desc).vectors)
    refs, queries = (np.load(f) for f in files)
    flat = faiss.IndexFlatL2(E)
    flat.add(refs)
    exact_d, exact = flat.search(queries, 10)
    copies = -exact_d[:, 0] >= threshold if threshold is not None else None
    nlist = default_nlist(len(refs))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(E), E, nlist)
    ivf.train(refs)
    ivf.add(refs)
    out = dict(references=len(refs), queries=len(queries), nlist=nlist)
    for nprobe in nprobes:
        _, found = ivf.search(queries, 10, params=faiss.SearchParametersIVF(nprobe=nprobe))
        out[f"nprobe{nprobe}"] = recall_at_k(found, exact)
        if copies is not None and copies.any():
            out[f"nprobe{nprobe}_copy_top1"] = float((found[copies, 0] == exact[copies, 0]).mean())
    if copies is not None:
        out["copies"] = int(copies.sum())
    return out


def bench_model(trained, photo: Path, onnx_dir: Path, reps: int = 30) -> dict:
    """ms per image of each request stage on one thread: decode (512-px JPEG), prepare, Q with PyTorch and
    with onnxruntime (batch 1 and 8)."""
    from qkcopy.collection.describe import Describer, onnx_sessions
    from qkcopy.data.images import decode_image

    data = jpeg_512(photo)
    torch_d, onnx_d = Describer(trained), Describer(trained, onnx_sessions(trained, onnx_dir, 1))
    img = decode_image(data)
    item = torch_d.prepare(img)

    def ms(f, per: int = 1) -> float:
        f()
        start = time.perf_counter()
        for _ in range(reps):
            f()
        return (time.perf_counter() - start) / reps / per * 1000

    return dict(decode_ms=ms(lambda: decode_image(data)), prepare_ms=ms(lambda: torch_d.prepare(img)),
                torch_b1_ms=ms(lambda: torch_d.describe("query", [item])),
                torch_b8_ms_per_image=ms(lambda: torch_d.describe("query", [item] * 8), 8),
                onnx_b1_ms=ms(lambda: onnx_d.describe("query", [item])),
                onnx_b8_ms_per_image=ms(lambda: onnx_d.describe("query", [item] * 8), 8))


def jpeg_512(path: Path) -> bytes:
    from qkcopy.data.images import load_image

    img = load_image(path)
    img.thumbnail((512, 512))
    if max(img.size) < 512:
        img = img.resize((512, round(512 * img.size[1] / img.size[0])))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _rss_mb(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k.lower(): int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def bench_service(collection: Path, key: str, query: bytes, add_images: list[bytes], requests: int = 100,
                  levels=(1, 8, 32), per_level: int = 150, max_s: float = 90.0, runtime: str = "torch") -> dict:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "qkcopy", "serve", str(collection), "--port", str(port),
                             "--device", "cpu", "--threads", "1", "--queue", "256", "--snapshot-interval", "3600",
                             "--runtime", runtime],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        while True:
            if proc.poll() is not None or time.perf_counter() - t0 > 600:
                raise RuntimeError(f"the server did not start (exit {proc.poll()})")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        out: dict = dict(start_s=time.perf_counter() - t0)
        files = {"images": ("q.jpg", query, "image/jpeg")}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            for _ in range(5):  # warm-up
                c.post("/v1/match", files=files).raise_for_status()
            times = []
            for _ in range(requests):
                t = time.perf_counter()
                c.post("/v1/match", files=files).raise_for_status()
                times.append(time.perf_counter() - t)
        out["latency"] = dict(p50_ms=pct(times, 50), p99_ms=pct(times, 99), n=requests)

        def client(n_requests: int, deadline: float) -> tuple[int, int]:
            ok = refused = 0
            with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
                for _ in range(n_requests):
                    if time.perf_counter() > deadline:
                        break
                    r = c.post("/v1/match", files=files)
                    ok += r.status_code == 200
                    refused += r.status_code in (429, 503)
            return ok, refused

        out["throughput"] = {}
        for level in levels:
            start = time.perf_counter()
            with ThreadPoolExecutor(level) as pool:
                each, deadline = max(1, per_level // level), start + max_s
                done = list(pool.map(lambda _, n=each, d=deadline: client(n, d), range(level)))
            took = time.perf_counter() - start
            ok = sum(d[0] for d in done)
            out["throughput"][level] = dict(matches_per_s=ok / took, ok=ok, refused=sum(d[1] for d in done),
                                            seconds=took)
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            start = time.perf_counter()
            for i, data in enumerate(add_images):
                c.post("/v1/references", files={"image": (f"add{i}.jpg", data, "image/jpeg")},
                       data={"bank": "bench"}).raise_for_status()
            out["ingest_api_images_per_s"] = len(add_images) / (time.perf_counter() - start)
        out["memory_mb"] = _rss_mb(proc.pid)
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
