"""The one way a trained model is evaluated on a benchmark: Q on its queries, K on its references, exhaustive
L2 search, the ISC2021 metrics. Training's per-phase rows, `qkcopy eval`/calibration, the demo and the Python
API all call `evaluate_model`.

Letters: Nq queries, Nr references, E descriptor dim, k neighbours per query.
"""

from __future__ import annotations

from dataclasses import dataclass

from qkcopy.data.benchmark import Benchmark
from qkcopy.data.isc_csv import Predictions
from qkcopy.model.inference import Embeddings
from qkcopy.model.trained import TrainedModels
from qkcopy.evaluation.knn import search_predictions
from qkcopy.evaluation.metrics import Metrics, isc_metrics


@dataclass(frozen=True)
class ModelEvaluation:
    queries: Embeddings  # (Nq, E) with Q
    references: Embeddings  # (Nr, E) with K
    predictions: Predictions  # the k nearest references of each query, score −squared L2
    metrics: Metrics  # µAP, recall at precision 0.9, recall@1


def evaluate_model(trained: TrainedModels, benchmark: Benchmark, k: int = 10, batch_size: int = 64,
                   workers: int = 2) -> ModelEvaluation:
    """Describe the benchmark's queries (Q) and references (K), search, score.

    Args:
        trained: the model (its own input size and device).
        benchmark: queries, references and the ground truth (ours or DISC21's layout).
        k: neighbours kept per query (ISC2021 `--knn`).
    Returns:
        `ModelEvaluation` with the descriptors, the predictions and the metrics.
    Raises:
        ValueError: no readable query or reference image.
    """
    queries = trained.describe("query", benchmark.query_paths, batch_size, workers, "queries")
    refs = trained.describe("reference", benchmark.reference_paths, batch_size, workers, "references")
    if not queries.ids or not refs.ids:
        raise ValueError(f"{benchmark.root}: no readable {'queries' if not queries.ids else 'references'}")
    preds = search_predictions(queries.ids, queries.vectors, refs.ids, refs.vectors, k=k)
    return ModelEvaluation(queries, refs, preds, isc_metrics(preds, benchmark.ground_truth))
