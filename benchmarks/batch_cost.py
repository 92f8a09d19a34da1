"""(issue 20; docs/RESULTS.md "Where region time goes") ms an image of one model call on the CPU by batch and
input side, with the threads given: why `qkcopy.model.inference.describe_batch` runs CPU batches in chunks.

    OMP_NUM_THREADS=1 python benchmarks/batch_cost.py runs/s24/cpu 1
"""
import sys
import time

import torch

from qkcopy.model.trained import load_trained

torch.set_num_threads(int(sys.argv[2]))
model = load_trained(sys.argv[1], "cpu").q.eval()
with torch.no_grad():
    for size in (192, 128):
        for b in (1, 2, 3, 4, 6, 12, 16, 64):
            x, g = torch.rand(b, 3, size, size), torch.rand(b, 256)
            model(x, g)  # warm-up
            reps = max(1, 64 // b)
            start = time.perf_counter()
            for _ in range(reps):
                model(x, g)
            print(f"threads {torch.get_num_threads()} side {size} batch {b:3d}: "
                  f"{(time.perf_counter() - start) * 1000 / (reps * b):.1f} ms an image", flush=True)
