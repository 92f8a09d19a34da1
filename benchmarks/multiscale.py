"""(issue 21, part 4; docs/RESULTS.md "Test-time input size and multi-scale descriptors") The run's test-time input
side, one size or the mean of two sizes' descriptors, on a selection benchmark beside a report benchmark.

    python benchmarks/multiscale.py RUN OUT.json SELECTION_BENCH REPORT_BENCH [SIZE …]

Each size's Q (queries) and K (references) descriptors are computed once per benchmark (whole image, the
run's weights, `load_trained(test_size=S)`); a pair of sizes is the mean of the two descriptors, whose GIST
part is the same at both sizes. Prints µAP, R@P90 and recall@1 overall and µAP per edit family, and writes
them to OUT.json.
"""

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

from qkcopy.data.benchmark import load_benchmark
from qkcopy.evaluation.knn import search_predictions
from qkcopy.evaluation.metrics import isc_metrics
from qkcopy.evaluation.per_family import per_family_metrics, query_families
from qkcopy.io import atomic_write_json
from qkcopy.model.trained import load_trained


def main() -> None:
    run, out, benches = sys.argv[1], Path(sys.argv[2]), sys.argv[3:5]
    sizes = [int(s) for s in sys.argv[5:]] or [128, 160, 192, 224, 256]
    torch.set_num_threads(2)
    results: dict = {}
    for path in benches:
        bench = load_benchmark(path)
        families = query_families(bench)
        described = {}
        for size in sizes:
            trained = load_trained(run, "cpu", test_size=size)
            q = trained.describe("query", bench.query_paths, 64, 2, f"queries @{size}")
            r = trained.describe("reference", bench.reference_paths, 64, 2, f"references @{size}")
            described[(size,)] = (q.ids, q.vectors, r.ids, r.vectors)
        for a, b in itertools.combinations(sizes, 2):
            qa, ra = described[(a,)][1], described[(a,)][3]
            qb, rb = described[(b,)][1], described[(b,)][3]
            described[(a, b)] = (described[(a,)][0], (qa + qb) / 2, described[(a,)][2], (ra + rb) / 2)
        rows = results.setdefault(path, {})
        for key, (qids, qv, rids, rv) in described.items():
            preds = search_predictions(qids, qv, rids, rv, k=10)
            m = isc_metrics(preds, bench.ground_truth)
            fam = per_family_metrics(preds, bench.ground_truth, families)
            name = "+".join(map(str, key))
            rows[name] = dict(micro_ap=round(m.micro_ap, 4), recall_at_p90=round(m.recall_at_p90, 4),
                              recall_at_1=round(m.recall_at_1, 4),
                              families={f: round(x.micro_ap, 4) for f, x in fam.items()})
            print(path, name, json.dumps(rows[name]), flush=True)
        atomic_write_json(out, results)


if __name__ == "__main__":
    main()
