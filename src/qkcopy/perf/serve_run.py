"""`qkcopy bench-serve`, the run: latency, throughput, ingestion, memory and IVF recall of the matching service
at N references (synthetic descriptors for the index part, real JPEGs through the model), each part's figures
printed and saved to results.json as they come. Talks to 127.0.0.1 only; every load loop is bounded. Run it
on an otherwise idle machine, one torch/faiss thread.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)
PARTS = ("model", "index", "store", "real", "service")


def run_serve_bench(model: Path, images: list[Path], out: Path, queries: Path | None = None,
                    threshold: float | None = None, sizes: tuple[int, ...] = (100_000, 1_000_000), nlist: int = 1024,
                    parts: tuple[str, ...] = PARTS, stores: tuple[str, ...] = ("faiss",)) -> dict:
    """Every figure of the service benchmark; returns what it saved to out/results.json.

    Args:
        model: run directory (or a checkpoint inside one). images: folders of real reference photos.
        out: work folder. queries: real query photos (IVF recall on real descriptors).
        threshold: copy threshold for the IVF copy-top-1 agreement. sizes: reference counts.
        nlist: IVF cells (capped by `default_nlist`). parts: which parts of `PARTS` to run.
        stores: the collection's vector stores the store and service parts run on, one after the other
            ("faiss", "milvus-lite", "milvus://host:port"); figures of a store other than faiss are keyed
            "STORE:part".
    """
    import faiss
    import torch

    from qkcopy.data.images import scan_images
    from qkcopy.io import atomic_write_json
    from qkcopy.model.trained import load_trained
    from qkcopy.perf import serve as bench
    from qkcopy.retrieval.faiss_index import default_nlist

    torch.set_num_threads(1)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    faiss.omp_set_num_threads(1)
    trained = load_trained(model, "cpu")
    photos = [p for folder in images for p in scan_images(folder)]
    out.mkdir(parents=True, exist_ok=True)
    results: dict = dict(threads=1, sizes=list(sizes), model=trained.fingerprint, cpu_count=os.cpu_count())

    def save():
        atomic_write_json(out / "results.json", results)
    if "model" in parts:
        results["model"] = bench.bench_model(trained, photos[0], out / f"onnx-{trained.fingerprint}")
        print("per image, one thread:", results["model"], flush=True)
        save()
    if "real" in parts and queries:
        results["real_ivf"] = bench.bench_real_ivf(trained, photos, scan_images(queries), out, threshold)
        print("IVF recall@10 vs exact, real descriptors:", results["real_ivf"], flush=True)
        save()
    for n in sizes:
        nlist = min(nlist, default_nlist(n))
        row = results.setdefault(str(n), {})
        if "index" in parts:
            row["index"] = bench.bench_index(n, nlist)
            print(f"N={n} index:", row["index"], flush=True)
            save()
        for store in stores:
            _store_and_service(store, n, nlist, row, parts, trained, model, photos, out, save)
    log.info("results: %s", out / "results.json")
    return results


def _store_and_service(store: str, n: int, nlist: int, row: dict, parts, trained, model: Path, photos: list,
                       out: Path, save) -> None:
    from qkcopy.collection import Collection
    from qkcopy.collection.describe import Describer, add_files, onnx_sessions
    from qkcopy.collection.vector_store import is_milvus
    from qkcopy.perf import serve as bench
    from qkcopy.serve.auth import create_key

    if not {"store", "service"} & set(parts):
        return
    tag = "" if store == "faiss" else f"{store}:"
    coll_dir = out / f"coll-{n}" if store == "faiss" else out / f"coll-{n}-{store.replace(':', '-').replace('/', '')}"
    shutil.rmtree(coll_dir, ignore_errors=True)
    row[f"{tag}store"] = _in_child(bench.bench_store, n, coll_dir, trained.fingerprint, 2000, store)
    print(f"N={n} {store} store:", row[f"{tag}store"], flush=True)
    save()
    if "service" in parts:
        with Collection.open(coll_dir) as coll:
            coll.store.set_settings(dict(model=str(Path(model).resolve())))
            add_files(coll, Describer(trained), photos[:200], "real", {})
            key = create_key(coll.store, "bench", ["read", "write"])
        query = bench.jpeg_512(photos[0])
        adds = [bench.jpeg_512(p) for p in photos[200:240]]
        row[f"{tag}service_flat"] = bench.bench_service(coll_dir, key, query, adds)
        print(f"N={n} {store} service, {'Milvus FLAT' if is_milvus(store) else 'flat'} index:",
              row[f"{tag}service_flat"], flush=True)
        save()
        _in_child(bench.reindex, coll_dir, nlist, 16)  # faiss's IVF, or Milvus's own IVF_FLAT
        row[f"{tag}service_ivf"] = bench.bench_service(coll_dir, key, query, [])
        row[f"{tag}service_ivf"]["nlist"], row[f"{tag}service_ivf"]["nprobe"] = nlist, 16
        print(f"N={n} {store} service, IVF index:", row[f"{tag}service_ivf"], flush=True)
        save()
        if not is_milvus(store):  # the other runtime
            onnx_sessions(trained, coll_dir / f"onnx-{trained.fingerprint}", 1)  # export before the timed start
            row["service_ivf_onnx"] = bench.bench_service(coll_dir, key, query, [], runtime="onnx")
            print(f"N={n} service, IVF index, onnxruntime:", row["service_ivf_onnx"], flush=True)
            save()
    shutil.rmtree(coll_dir, ignore_errors=True)


def _in_child(fn, *args):
    """Run `fn(*args)` in a fresh process, so that building N references never weighs on this one, which
    generates the load (it did not explain the slower lookups at 1M: docs/RESULTS.md)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()
