"""Micro-batching: concurrent requests share one model call, on one worker thread, behind a bounded queue.

`submit(job)` puts a job on a queue of at most `queue_size` jobs and returns a `concurrent.futures.Future`;
a full queue raises `Overloaded` at once (the service answers 429 with Retry-After), never an unbounded
backlog. The worker takes the first waiting job, gathers more for up to `max_wait_s` or until `max_batch`,
and hands the batch to `run(jobs) -> results` (one result or exception per job). So throughput grows with
concurrency, and the model never runs on the web server's event loop.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The queue is full; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotRunning(RuntimeError):
    """The worker is stopped (shutting down, or it died)."""


@dataclass
class _Item:
    job: Any
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, run: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 16,
                 max_wait_s: float = 0.005, queue_size: int = 64,
                 on_batch: Callable[[int, float, float], None] | None = None) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch and queue_size must be >= 1 and max_wait_s >= 0, got {max_batch}, "
                             f"{queue_size}, {max_wait_s}")
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.on_batch = on_batch  # (batch size, seconds waited by the oldest job, seconds computing)
        self._queue: queue.Queue[_Item] = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._batch_s = 0.05  # running mean of one batch's compute time, for Retry-After

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def full(self) -> bool:
        return self._queue.full()

    def retry_after(self) -> int:
        """Seconds until the queue has drained, by the recent batch time (at least 1)."""
        return max(1, math.ceil(self.depth / self.max_batch * self._batch_s))

    def start(self) -> Batcher:
        self._thread = threading.Thread(target=self._loop, name="qkcopy-batcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        while True:  # whatever is left is answered, not dropped silently
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            item.future.set_exception(NotRunning("the server is shutting down"))

    def submit(self, job: Any) -> Future:
        if not self.alive:
            raise NotRunning("the model worker is not running")
        item = _Item(job)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} images are already waiting for the model",
                             self.retry_after()) from None
        return item.future

    def _gather(self, first: _Item) -> list[_Item]:
        items = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(items) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                items.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            items = [i for i in self._gather(first) if i.future.set_running_or_notify_cancel()]
            if not items:
                continue
            start = time.monotonic()
            try:
                results = self.run([i.job for i in items])
            except Exception as err:  # a bug in `run` fails this batch, not the worker
                log.exception("batch of %d failed", len(items))
                results = [err] * len(items)
            took = time.monotonic() - start
            self._batch_s = 0.8 * self._batch_s + 0.2 * took
            if self.on_batch is not None:  # before the replies: a client that reads /metrics next sees this batch
                try:
                    self.on_batch(len(items), start - items[0].enqueued, took)
                except Exception:  # a metrics bug must not hold the replies
                    log.exception("on_batch failed")
            for item, result in zip(items, results):
                if isinstance(result, Exception):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
