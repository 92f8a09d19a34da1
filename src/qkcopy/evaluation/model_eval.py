"""The one way a trained model is evaluated on a benchmark: Q on its queries, K on its references, exhaustive
L2 search, the ISC2021 metrics. Training's per-phase rows, `qkcopy eval`/calibration, the demo and the Python
API all call `evaluate_model`.

Letters: Nq queries, Nr references, E descriptor dim, k neighbours per query.
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from qkcopy.data.benchmark import Benchmark
from qkcopy.data.isc_csv import Predictions
from qkcopy.data.verify import Verification, VerifyConfig, verify_predictions
from qkcopy.model.inference import Embeddings
from qkcopy.model.trained import TrainedModels
from qkcopy.evaluation.knn import search_predictions
from qkcopy.evaluation.metrics import Metrics, isc_metrics
from qkcopy.evaluation.region_search import RegionPredictions, region_predictions


@dataclass(frozen=True)
class ModelEvaluation:
    queries: Embeddings  # (Nq, E) with Q
    references: Embeddings  # (Nr, E) with K
    predictions: Predictions  # the k nearest references of each query, score −squared L2
    metrics: Metrics  # µAP, recall at precision 0.9, recall@1
    regions: RegionPredictions | None = None  # with query regions: each prediction's winning box
    verified: dict[tuple[str, str], Verification] | None = None  # with verification: each verified pair's result


def evaluate_model(trained: TrainedModels, benchmark: Benchmark, k: int = 10, batch_size: int = 64,
                   workers: int = 2, regions: int = 0, region_margin: float = 0.0,
                   verify: VerifyConfig | None = None, region_size: int | None = None) -> ModelEvaluation:
    """Describe the benchmark's queries (Q) and references (K), search, score.

    Args:
        trained: the model (its own input size and device).
        benchmark: queries, references and the ground truth (ours or DISC21's layout).
        k: neighbours kept per query (ISC2021 `--knn`).
        regions: query regions described beside the whole query (`TrainedModels.describe_regions`); a pair's
            score is then the best over the query's regions (`region_search`), with `region_margin` added to
            every region's squared distance but the whole image's; `region_size`: the regions' input side
            (default the model's).
        verify: when given, the top `verify.k` references of each query are verified by local features and
            re-scored (`qkcopy.data.verify.verify_predictions`); the metrics are of the final scores.
    Returns:
        `ModelEvaluation` with the descriptors, the predictions and the metrics.
    Raises:
        ValueError: no readable query or reference image.
    """
    table = None
    if regions:
        table = trained.describe_regions(benchmark.query_paths, regions, batch_size, workers, "query regions",
                                         region_size)
        queries = table.whole()
    else:
        queries = trained.describe("query", benchmark.query_paths, batch_size, workers, "queries")
    refs = trained.describe("reference", benchmark.reference_paths, batch_size, workers, "references")
    if not queries.ids or not refs.ids:
        raise ValueError(f"{benchmark.root}: no readable {'queries' if not queries.ids else 'references'}")
    found = None
    if table is None:
        preds = search_predictions(queries.ids, queries.vectors, refs.ids, refs.vectors, k=k)
    else:
        found = region_predictions(table.ids, table.vectors, table.owner, table.boxes, refs.ids, refs.vectors, k,
                                   region_margin)
        preds = found.predictions
    verified = None
    if verify is not None:
        preds, verified = verify_predictions(preds, dict(zip(benchmark.query_ids, benchmark.query_paths)),
                                             dict(zip(benchmark.reference_ids, benchmark.reference_paths)),
                                             verify, progress=tqdm)
    return ModelEvaluation(queries, refs, preds, isc_metrics(preds, benchmark.ground_truth), found, verified)
