"""Blocking inference off the event loop, with bounded concurrency and a bounded queue.

``runner.run(fn, *args)`` runs ``fn`` in the runner's own thread pool (``max_concurrency`` threads).
At most ``max_concurrency + max_queue`` calls may be admitted (running or waiting); one more is refused
at once with `BusyError` (503 + Retry-After estimated from recent latency). A waiter whose request
deadline passes before it gets a slot is refused the same way.

A slot is released only when the worker thread is really done, even if the awaiting request was
cancelled (client went away): a timeout never stops a thread, so only this accounting keeps the number
of busy threads and queued calls bounded.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from services.common import context, metrics
from services.common.errors import BusyError, DeadlineExceededError

T = TypeVar("T")
_DONE = object()


async def load_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking load (model weights) in a thread that exits when it is done.

    Not ``asyncio.to_thread``: the loop's default executor keeps its threads, and a thread that ran
    OpenMP code (CTranslate2, torch) keeps an idle OpenMP team alive with it. With more OpenMP threads
    than cores, libgomp stops spinning at barriers and every later inference gets slower (measured: stt
    RTF 0.099 with the model loaded in an exiting thread, 0.147 loaded through ``to_thread``).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    ctx = contextvars.copy_context()

    def settle(result: Any = None, error: BaseException | None = None) -> None:
        if not done.done():
            done.set_exception(error) if error is not None else done.set_result(result)

    def target() -> None:
        try:
            result = ctx.run(fn, *args)
        except BaseException as exc:  # handed to the awaiting coroutine (bound now: `exc` dies with the block)
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result)

    thread = threading.Thread(target=target, name=f"load-{getattr(fn, '__name__', 'model')}", daemon=True)
    thread.start()
    try:
        return await done
    finally:
        while thread.is_alive():  # it is past its last line; return once it is really gone
            await asyncio.sleep(0.001)


class InferenceRunner:
    def __init__(self, engine: str, *, max_concurrency: int = 1, max_queue: int = 8) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        self.engine = engine
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=f"infer-{engine}")
        self._slots = asyncio.Semaphore(max_concurrency)
        self._admitted = 0
        self._avg_s = 1.0  # moving average of one call, for Retry-After

    @classmethod
    def from_settings(cls, engine: str, settings: Any) -> InferenceRunner:
        return cls(engine, max_concurrency=settings.max_concurrency, max_queue=settings.max_queue)

    @property
    def admitted(self) -> int:
        """Calls running or waiting right now."""
        return self._admitted

    def _retry_after_s(self) -> float:
        waves = math.ceil((self._admitted + 1) / self.max_concurrency)
        return max(1.0, waves * self._avg_s)

    def _gauge(self) -> None:
        metrics.INFERENCE_QUEUE.labels(metrics.service(), self.engine).set(self._admitted)

    async def _admit(self) -> None:
        """Take a queue place, then wait for a slot within the request's deadline."""
        if self._admitted >= self.max_concurrency + self.max_queue:
            metrics.REJECTED.labels(metrics.service(), self.engine).inc()
            raise BusyError(
                f"{self.engine} is busy ({self._admitted} calls admitted, limit "
                f"{self.max_concurrency + self.max_queue}); retry later",
                retry_after_s=self._retry_after_s(),
            )
        deadline = context.get_deadline()
        if deadline is not None and deadline.expired:
            raise DeadlineExceededError(f"{self.engine}: the request's deadline had passed before inference")
        self._admitted += 1
        self._gauge()
        try:
            if deadline is None:
                await self._slots.acquire()
            else:
                await asyncio.wait_for(self._slots.acquire(), timeout=deadline.remaining())
        except TimeoutError:
            self._leave(slot=False)
            metrics.REJECTED.labels(metrics.service(), self.engine).inc()
            raise BusyError(
                f"{self.engine} had no free slot before the request's deadline; retry later",
                retry_after_s=self._retry_after_s(),
            ) from None
        except BaseException:
            self._leave(slot=False)
            raise

    def _leave(self, *, slot: bool) -> None:
        if slot:
            self._slots.release()
        self._admitted -= 1
        self._gauge()

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()  # correlation id reaches log records from the thread
        return loop.run_in_executor(self._executor, ctx.run, fn, *args)

    def _observe(self, operation: str, seconds: float) -> None:
        self._avg_s = 0.8 * self._avg_s + 0.2 * seconds
        metrics.INFERENCE_DURATION.labels(metrics.service(), self.engine, operation).observe(seconds)

    async def _await_step(self, fut: asyncio.Future[T]) -> T:
        # shield: a cancelled caller must not mark the step done while its thread still runs
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code = getattr(exc, "code", "exception")
            metrics.ENGINE_ERRORS.labels(metrics.service(), self.engine, code).inc()
            raise

    def _release_when_done(self, fut: asyncio.Future[Any] | None) -> None:
        self._when_done(fut, lambda: self._leave(slot=True))

    @staticmethod
    def _when_done(fut: asyncio.Future[Any] | None, then: Callable[[], None]) -> None:
        """``then()`` now if ``fut`` is None or done, else once it is; its outcome is retrieved (a caller that
        gave up must not leave "never retrieved" noise)."""
        if fut is None or fut.done():
            then()
            return

        def done(f: asyncio.Future[Any]) -> None:
            if not f.cancelled():
                f.exception()
            then()

        fut.add_done_callback(done)

    async def run(self, fn: Callable[..., T], *args: Any, operation: str = "infer", **kwargs: Any) -> T:
        """Run one blocking call; raises BusyError when overloaded."""
        await self._admit()
        fut: asyncio.Future[T] | None = None
        try:
            start = time.perf_counter()
            fut = self._submit(functools.partial(fn, *args, **kwargs))
            result = await self._await_step(fut)
            self._observe(operation, time.perf_counter() - start)
            return result
        finally:
            self._release_when_done(fut)

    async def iterate(
        self, make_iter: Callable[..., Iterator[T]], *args: Any, operation: str = "stream", **kwargs: Any
    ) -> AsyncIterator[T]:
        """Advance a blocking generator one item at a time off the loop, holding one slot throughout.

        ``make_iter(*args, **kwargs)`` is called in the worker thread too (it may load or prepare).
        """
        await self._admit()
        fut: asyncio.Future[Any] | None = None
        iterator: Iterator[T] | None = None
        finished = False
        try:
            start = time.perf_counter()
            fut = self._submit(functools.partial(make_iter, *args, **kwargs))
            iterator = await self._await_step(fut)
            while True:
                fut = self._submit(next, iterator, _DONE)
                item = await self._await_step(fut)
                if item is _DONE:
                    finished = True
                    break
                yield item
            self._observe(operation, time.perf_counter() - start)
        finally:
            close = None if finished else getattr(iterator, "close", None)
            if close is None:
                self._release_when_done(fut)
            else:
                self._close_then_release(fut, close)

    def _close_then_release(self, pending: asyncio.Future[Any] | None, close: Callable[[], Any]) -> None:
        """A stream stopped early (client gone, error): close its generator in a worker thread once its
        last step is done (it may hold a resource: the llm's pipe to its llama.cpp process, which cancels
        there), and release the slot only after that."""
        loop = asyncio.get_running_loop()

        def submit_close() -> None:
            try:
                closing = loop.run_in_executor(self._executor, close)
            except RuntimeError:  # loop or executor shut down: nothing runs any more
                self._leave(slot=True)
            else:
                self._release_when_done(closing)

        self._when_done(pending, submit_close)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
