"""Prometheus metrics of one app (its own registry): requests, latency, batch sizes, queue wait and depth."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from qkcopy.serve.service import MatchService


class ServiceMetrics:
    def __init__(self, service: MatchService) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("qkcopy_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("qkcopy_request_seconds", "HTTP request latency", ["route"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch = Histogram("qkcopy_batch_size", "images per model call", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64))
        self.queue_wait = Histogram("qkcopy_queue_wait_seconds", "time a job waited for the model",
                                    registry=self.registry, buckets=(.001, .005, .01, .025, .05, .1, .5, 1, 5))
        Gauge("qkcopy_queue_depth", "jobs waiting for the model", registry=self.registry).set_function(
            lambda: service.batcher.depth)
        Gauge("qkcopy_references", "references in the index", registry=self.registry).set_function(
            lambda: len(service.collection.index()) if service.batcher.alive else 0)

    def on_batch(self, size: int, waited: float, took: float) -> None:
        self.batch.observe(size)
        self.queue_wait.observe(waited)
