"""(issue 20; docs/RESULTS.md "Where the region time goes") The region cost ratio with less noise: the whole image
and N regions described alternately, 3 times each, at loader batches 16 and 64 (one thread, --workers 0); the
minimum of each, and their ratio.

    OMP_NUM_THREADS=1 python benchmarks/regions_ratio.py runs/s24/cpu data/dev 4 128
"""
import sys
import time

import cv2
import torch

from qkcopy.data.benchmark import load_benchmark
from qkcopy.model.trained import load_trained

torch.set_num_threads(1)
cv2.setNumThreads(1)
run, bench, n, size = sys.argv[1], load_benchmark(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = load_trained(run, "cpu")
paths = list(bench.query_paths)[:60]
model.describe("query", paths[:4], 16, 0)  # warm-up


def ms(f) -> float:
    start = time.perf_counter()
    f()
    return (time.perf_counter() - start) * 1000 / len(paths)


for batch in (16, 64):
    whole, regions = [], []
    for _ in range(3):
        whole.append(ms(lambda: model.describe("query", paths, batch, 0)))
        regions.append(ms(lambda: model.describe_regions(paths, n, batch, 0, region_size=size)))
    print(f"batch {batch}: whole {min(whole):.1f} ms ({' '.join(f'{x:.1f}' for x in whole)}), {n} regions at {size} px "
          f"{min(regions):.1f} ms ({' '.join(f'{x:.1f}' for x in regions)}): {min(regions) / min(whole):.2f}x",
          flush=True)
