"""The micro-batching worker of ``waluigi serve``: one thread owns a generator and runs the
requests queued so far as one batch (used by the chat server and by the fine-tuned models
of :mod:`waluigi.serve.finetune_jobs`)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

from waluigi.models.base import Completion, GenerationRequest, Generator, TextRequest

DEFAULT_MAX_BATCH = 64  # requests (choices) per generate call


# --------------------------------------------------------------------------------------
# micro-batching worker


class _Job:
    __slots__ = ("requests", "future", "text")

    def __init__(self, requests: Sequence[GenerationRequest | TextRequest]):
        self.requests = list(requests)
        # raw-text jobs (/v1/completions) run through generate_text, never in a chat batch
        self.text = bool(self.requests) and all(isinstance(r, TextRequest) for r in self.requests)
        self.future: Future = Future()


class Batcher:
    """One worker thread owns the generator: it takes the jobs queued so far (waiting up to
    ``batch_window`` seconds for more after the first), runs them as ONE ``generate`` call
    under ``lock``, and resolves each job's future with its completions in order. If a batch
    of several jobs fails, each job is retried alone so that one bad request fails alone.
    Chat jobs and raw-text jobs (:class:`TextRequest`) taken together run as two calls."""

    def __init__(self, generator: Generator, *, lock: threading.Lock | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, batch_window: float = 0.005):
        self.generator = generator
        self.lock = lock or threading.Lock()
        self.max_batch = max(1, int(max_batch))
        self.batch_window = float(batch_window)
        self.batch_sizes: list[int] = []  # jobs per generate call (for tests and benchmarks)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, requests: Sequence[GenerationRequest | TextRequest]) -> Future:
        """Queue ``requests`` (all chat, or all raw text); the future gets their completions."""
        job = _Job(requests)
        self._ensure_started()
        self._queue.put(job)
        return job.future

    def pending(self) -> int:
        return self._queue.qsize()

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="waluigi-serve-batcher", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            size = len(job.requests)
            deadline = time.monotonic() + self.batch_window
            stop = False
            while size < self.max_batch:
                try:
                    remaining = deadline - time.monotonic()
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                size += len(nxt.requests)
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        for group in ([j for j in jobs if not j.text], [j for j in jobs if j.text]):
            if group:
                self._run_group(group)

    def _run_group(self, jobs: list[_Job]) -> None:
        text = jobs[0].text
        try:
            results = self._generate([r for j in jobs for r in j.requests], text)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            for j in jobs:  # find the culprit: each job alone
                try:
                    j.future.set_result(self._generate(j.requests, text))
                    self.batch_sizes.append(1)
                except BaseException as exc1:  # noqa: BLE001
                    j.future.set_exception(exc1)
            return
        self.batch_sizes.append(len(jobs))
        start = 0
        for j in jobs:
            j.future.set_result(results[start:start + len(j.requests)])
            start += len(j.requests)

    def _generate(self, requests: list, text: bool = False) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)
        with self.lock:
            results = self.generator.generate_text(requests) if text else self.generator.generate(requests)
            for index, completion in results:
                out[index] = completion
        if any(c is None for c in out):
            raise RuntimeError("the generator did not return a completion for every request")
        return out  # type: ignore[return-value]


