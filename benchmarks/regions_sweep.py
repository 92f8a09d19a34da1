"""(issue 20; docs/RESULTS.md "Regions and verification") Regions sweep: describe each query with 16 regions once; score with the first m (m = 0, 2, 4, 8, 16) and a
region margin; µAP per family and overall. Proposals are ordered, so the first m of 16 are what --regions m gives."""
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
from qkcopy.data.benchmark import load_benchmark
from qkcopy.evaluation.metrics import isc_metrics
from qkcopy.evaluation.per_family import per_family_metrics, query_families
from qkcopy.evaluation.region_search import region_predictions
from qkcopy.evaluation.transfer import quiet_metrics
from qkcopy.model.trained import load_trained

run, out, rsize = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = load_trained(run, "cpu")
rows = []
for name in sys.argv[4:]:
    b = load_benchmark(name)
    fam = query_families(b)
    table = t.describe_regions(b.query_paths, 16, 64, 0, region_size=rsize)
    refs = t.describe("reference", b.reference_paths, 64, 0)
    rank = np.arange(len(table.owner)) - np.searchsorted(table.owner, table.owner)  # region index within query
    for m in (0, 2, 4, 8, 16):
        keep = rank <= m
        for margin in ((0.0,) if m == 0 else (0.0, 0.2)):
            p = region_predictions(table.ids, table.vectors[keep], table.owner[keep], table.boxes[keep], refs.ids,
                                   refs.vectors, 10, margin).predictions
            with quiet_metrics():
                per = {f: round(x.micro_ap, 3) for f, x in per_family_metrics(p, b.ground_truth, fam).items()}
            allm = isc_metrics(p, b.ground_truth)
            row = dict(benchmark=name, region_size=rsize, regions=m, margin=margin, all=round(allm.micro_ap, 3),
                       r1=round(allm.recall_at_1, 3), **per)
            rows.append(row); print(json.dumps(row), flush=True)
json.dump(rows, open(out, "w"), indent=1)
