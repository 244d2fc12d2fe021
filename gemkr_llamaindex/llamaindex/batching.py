"""Opt-in micro-batching of concurrent retrievals: requests that arrive within a few milliseconds of each
other share one decoding batch.

Decoding a batch of B queries costs far less than B single decodes (one prefill, one batched forward per
step). A server whose users call one retriever concurrently gets that for free with
``GeMKRRetriever(..., batch_window_ms=5, max_batch=8)``: each call hands its query to one worker thread,
which waits up to the window for more (or until ``max_batch`` are there), decodes them together and hands
each caller its own result. Every query's clues and scores equal what it gets alone (batched decoding is
exact up to floating-point rounding of padded rows; see ``tests/test_llamaindex.py``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any


class MicroBatcher:
    """Collects single requests into batches for ``run_batch(requests) -> results`` (one result each)."""

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], window_ms: float = 5.0,
                 max_batch: int = 8) -> None:
        if window_ms < 0 or max_batch < 1:
            raise ValueError("window_ms must be >= 0 and max_batch >= 1")
        self.run_batch, self.window, self.max_batch = run_batch, window_ms / 1000.0, max_batch
        self._queue: queue.Queue[tuple[Any, Future]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0  # how many batches ran (for benchmarks and tests)

    def submit(self, request: Any) -> Future:
        """Queue one request; the future resolves to its result (or raises its batch's error)."""
        self._ensure_worker()
        fut: Future = Future()
        self._queue.put((request, fut))
        return fut

    def __call__(self, request: Any) -> Any:
        return self.submit(request).result()

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="gemkr-micro-batcher", daemon=True)
                self._worker.start()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            deadline = time.perf_counter() + self.window
            while len(batch) < self.max_batch:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            self.batches += 1
            try:
                results = self.run_batch([r for r, _ in batch])
            except BaseException as exc:  # every caller of the batch gets the error
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), res in zip(batch, results):
                fut.set_result(res)
