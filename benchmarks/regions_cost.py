"""(issue 20; docs/RESULTS.md "Regions and verification") Cost per query on one CPU thread: whole-image descriptor, with N regions, verification per pair."""
import sys, time
import cv2, numpy as np, torch
torch.set_num_threads(1); cv2.setNumThreads(1)
from qkcopy.data.benchmark import load_benchmark
from qkcopy.data.verify import VerifyConfig, verify_predictions
from qkcopy.evaluation.knn import search_predictions
from qkcopy.model.trained import load_trained

run, bench, n, rsize = sys.argv[1], load_benchmark(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t = load_trained(run, "cpu")
paths = list(bench.query_paths)[:60]
t.describe("query", paths[:4], 16, 0)  # warm-up
def timed(f):
    s = time.perf_counter(); out = f(); return out, (time.perf_counter() - s) * 1000 / len(paths)
whole, ms_whole = timed(lambda: t.describe("query", paths, 16, 0))
for m in (n // 2, n):
    reg, ms_reg = timed(lambda: t.describe_regions(paths, m, 16, 0, region_size=rsize))
    print(f"regions {m}: {ms_reg:.1f} ms/query ({reg.per_image:.1f} crops/query) = {ms_reg / ms_whole:.2f}x whole")
print(f"whole image: {ms_whole:.1f} ms/query")
refs = t.describe("reference", list(bench.reference_paths), 32, 0)
preds = search_predictions(whole.ids, whole.vectors, refs.ids, refs.vectors, k=3)
s = time.perf_counter()
_, found = verify_predictions(preds, dict(zip(bench.query_ids, bench.query_paths)),
                              dict(zip(bench.reference_ids, bench.reference_paths)), VerifyConfig(k=3))
total = (time.perf_counter() - s) * 1000
per_pair = np.array([v.seconds * 1000 for v in found.values()])
print(f"verification k=3: {total / len(paths):.1f} ms/query, {total / len(found):.1f} ms per verified pair all in "
      f"(median {np.median(per_pair):.1f} ms reference features + match), {len(found)} pairs")
