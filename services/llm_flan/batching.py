"""Dynamic batching: requests that arrive together share one generate call, off the event loop.

Every generation row (a request with ``n`` choices is ``n`` rows) becomes a `Job` in a bounded queue. One
scheduler task takes the oldest job, waits up to ``window_s`` for companions, and runs every waiting job with
the same decoding settings (`Sampling`; seeded jobs only with their own request) as one batch, at most
``max_batch`` rows, in the single model thread. Tokens reach each job's asyncio queue as they are generated,
so streaming works inside a batch, and each row stops on its own (EOS, stop sequence, its token cap, or its
client going away) without holding the others back beyond the batch's longest row.

Other model work (scoring candidates for tool choice) goes through the same thread with `call`, so the model
is never used by two threads at once. ``max_batch=1`` turns batching off (the benchmark's "off").
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from services.common import context, metrics
from services.common.errors import BusyError, EngineFailedError, ServiceError
from services.common.openai_chat import find_stop, safe_prefix_len
from services.llm_flan.backends import Sampling, Seq2SeqBackend

log = logging.getLogger(__name__)
T = TypeVar("T")
_ids = itertools.count()


@dataclass
class TextEvent:
    text: str


@dataclass
class DoneEvent:
    finish_reason: str  # "stop" | "length"
    completion_tokens: int


@dataclass
class Job:
    """One generation row. ``group`` ties the rows of one request (seeded requests batch only with themselves)."""

    input_ids: list[int]
    max_new_tokens: int
    sampling: Sampling
    stops: list[str]
    group: int
    events: asyncio.Queue[TextEvent | DoneEvent | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    deadline: context.Deadline | None = None
    # filled by the model thread
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the decoded text already sent
    done: bool = False

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.sampling, self.group if self.sampling.seed is not None else None)


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    group: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False

    @property
    def key(self) -> tuple[Any, ...]:
        return ("call", self.group)


class Batcher:
    def __init__(self, backend: Seq2SeqBackend, *, engine: str, window_s: float, max_batch: int, max_queue: int):
        self.backend = backend
        self.engine = engine
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._pending: deque[Job | _Call] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"generate-{engine}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._avg_batch_s = 1.0
        self.batches_run = 0

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._schedule(), name=f"batcher-{self.engine}")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in self._pending:
            self._fail(item, EngineFailedError(f"{self.engine} is shutting down"))
        self._pending.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- admission -----------------------------------------------------------------------------------------

    def _admit(self, rows: int) -> None:
        waiting = sum(1 for j in self._pending if isinstance(j, Job))
        if waiting + rows > self.max_queue + self.max_batch:
            metrics.REJECTED.labels(metrics.service(), self.engine).inc()
            waves = (waiting + rows) / self.max_batch + 1
            raise BusyError(f"{self.engine} is busy ({waiting} generation rows waiting, limit "
                            f"{self.max_queue + self.max_batch}); retry later",
                            retry_after_s=max(1.0, waves * self._avg_batch_s))

    def _enqueue(self, items: list[Any]) -> None:
        if self._task is None or self._wakeup is None:
            raise EngineFailedError(f"{self.engine} batcher is not running")
        self._pending.extend(items)
        metrics.INFERENCE_QUEUE.labels(metrics.service(), self.engine).set(len(self._pending))
        self._wakeup.set()

    def submit(self, jobs: list[Job]) -> None:
        """Queue the rows of one request (all or none); BusyError when the queue is full."""
        self._admit(len(jobs))
        deadline = context.get_deadline()
        for job in jobs:
            job.deadline = deadline
        self._enqueue(list(jobs))

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the model thread, in queue order with the generate calls."""
        self._admit(0)
        assert self._loop is not None
        item = _Call(fn, self._loop.create_future())
        self._enqueue([item])
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            item.cancelled = True
            raise

    async def results(self, job: Job) -> AsyncIterator[TextEvent | DoneEvent]:
        """The job's events in order, ending with DoneEvent; raises what failed it. Closing this early
        cancels the job (its row stops at the next token)."""
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, DoneEvent):
                    return
        finally:
            job.cancelled = True

    # --- scheduling -------------------------------------------------------------------------------------------

    def _fail(self, item: Job | _Call, exc: BaseException) -> None:
        if isinstance(item, Job):
            item.events.put_nowait(exc)
        elif not item.future.done():
            item.future.set_exception(exc)

    def _take_batch(self) -> list[Job] | _Call | None:
        while self._pending:
            head = self._pending[0]
            if head.cancelled:
                self._pending.popleft()
                continue
            if isinstance(head, Job) and head.deadline is not None and head.deadline.expired:
                self._pending.popleft()
                self._fail(head, BusyError(f"{self.engine} could not start this request before its deadline",
                                           retry_after_s=self._avg_batch_s))
                continue
            break
        if not self._pending:
            return None
        head = self._pending.popleft()
        if isinstance(head, _Call):
            return head
        batch, rest = [head], deque()
        while self._pending and len(batch) < self.max_batch:
            item = self._pending.popleft()
            if isinstance(item, Job) and item.key == head.key and not item.cancelled:
                batch.append(item)
            elif not item.cancelled:
                rest.append(item)
        rest.extend(self._pending)
        self._pending = rest
        return batch

    async def _schedule(self) -> None:
        assert self._wakeup is not None and self._loop is not None
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.window_s > 0 and self.max_batch > 1 and isinstance(self._pending[0], Job) \
                    and sum(isinstance(j, Job) for j in self._pending) < self.max_batch:
                await asyncio.sleep(self.window_s)  # let companions arrive
            work = self._take_batch()
            metrics.INFERENCE_QUEUE.labels(metrics.service(), self.engine).set(len(self._pending))
            if work is None:
                continue
            ctx = contextvars.copy_context()
            if isinstance(work, _Call):
                fut = self._loop.run_in_executor(self._executor, ctx.run, work.fn)
                try:
                    result = await fut
                except Exception as exc:
                    self._fail(work, exc)
                else:
                    if not work.future.done():
                        work.future.set_result(result)
                continue
            start = time.perf_counter()
            try:
                await self._loop.run_in_executor(self._executor, ctx.run, self._generate, work)
            except Exception as exc:  # a backend failure fails every row of the batch
                log.exception("%s generate failed for a batch of %d", self.engine, len(work))
                metrics.ENGINE_ERRORS.labels(metrics.service(), self.engine, "generate").inc()
                err = exc if isinstance(exc, ServiceError) else EngineFailedError(
                    f"{self.engine} failed to generate: {type(exc).__name__}: {exc}")
                for job in work:
                    if not job.done:
                        job.done = True
                        self._fail(job, err)
            seconds = time.perf_counter() - start
            self._avg_batch_s = 0.8 * self._avg_batch_s + 0.2 * seconds
            self.batches_run += 1
            metrics.INFERENCE_DURATION.labels(metrics.service(), self.engine, "generate").observe(seconds)
            metrics.LLM_BATCH_SIZE.labels(metrics.service(), self.engine).observe(len(work))

    # --- model thread ------------------------------------------------------------------------------------------

    def _emit(self, job: Job, event: TextEvent | DoneEvent) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(job.events.put_nowait, event)

    def _finish(self, job: Job, text: str, reason: str) -> None:
        if len(text) > job.sent:
            self._emit(job, TextEvent(text[job.sent:]))
            job.sent = len(text)
        job.done = True
        self._emit(job, DoneEvent(reason, len(job.tokens)))

    def _generate(self, jobs: list[Job]) -> None:
        backend = self.backend

        def on_token(row: int, token: int) -> bool:
            job = jobs[row]
            if job.done:
                return True
            if job.cancelled or (job.deadline is not None and job.deadline.expired):
                job.done = True
                if not job.cancelled:
                    self._emit(job, DoneEvent("length", len(job.tokens)))
                return True
            if token == backend.eos_id:
                self._finish(job, backend.decode(job.tokens), "stop")
                return True
            job.tokens.append(token)
            text = backend.decode(job.tokens)
            cut = find_stop(text, job.stops) if job.stops else -1
            if cut >= 0:
                self._finish(job, text[:cut], "stop")
                return True
            if len(job.tokens) >= job.max_new_tokens:
                self._finish(job, text, "length")
                return True
            ready = safe_prefix_len(text, job.stops) if job.stops else len(text)
            while ready > job.sent and text[ready - 1] == "\ufffd":  # an incomplete multi-byte character
                ready -= 1
            if ready > job.sent:
                self._emit(job, TextEvent(text[job.sent:ready]))
                job.sent = ready
            return False

        backend.generate([j.input_ids for j in jobs], jobs[0].sampling, max(j.max_new_tokens for j in jobs), on_token)
        for job in jobs:  # rows the backend ended without telling (EOS not reported, length reached)
            if not job.done:
                text = backend.decode(job.tokens)
                cut = find_stop(text, job.stops) if job.stops else -1
                reason = "length" if len(job.tokens) >= job.max_new_tokens else "stop"
                self._finish(job, text[:cut] if cut >= 0 else text, "stop" if cut >= 0 else reason)
