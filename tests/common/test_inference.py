"""The bounded inference runner: off the loop, bounded, 503 on overload, honest slot accounting."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prometheus_client import REGISTRY

from services.common import context, metrics
from services.common.errors import BusyError
from services.common.inference import InferenceRunner, load_in_thread


async def test_blocking_call_does_not_block_the_loop():
    runner = InferenceRunner("t-loop")
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.create_task(ticker())
    result = await runner.run(lambda: (time.sleep(0.3), "done")[1])
    t.cancel()
    assert result == "done"
    assert ticks >= 10  # the loop kept running while the thread slept


async def test_concurrency_is_bounded():
    runner = InferenceRunner("t-bound", max_concurrency=2, max_queue=10)
    lock = threading.Lock()
    running = peak = 0

    def work():
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    await asyncio.gather(*(runner.run(work) for _ in range(8)))
    assert peak == 2


async def test_full_queue_is_refused_with_retry_after():
    runner = InferenceRunner("t-full", max_concurrency=1, max_queue=1)
    gate = threading.Event()
    before = REGISTRY.get_sample_value("engine_rejected_total", {"service": metrics.service(), "engine": "t-full"}) or 0
    first = asyncio.create_task(runner.run(gate.wait))
    second = asyncio.create_task(runner.run(gate.wait))
    await asyncio.sleep(0.05)
    assert runner.admitted == 2
    with pytest.raises(BusyError) as info:
        await runner.run(gate.wait)
    assert info.value.http_status == 503
    assert int(info.value.headers["Retry-After"]) >= 1
    assert REGISTRY.get_sample_value("engine_rejected_total", {"service": metrics.service(), "engine": "t-full"}) == before + 1
    gate.set()
    await asyncio.gather(first, second)
    assert runner.admitted == 0


async def test_waiter_past_its_deadline_gets_busy():
    runner = InferenceRunner("t-deadline", max_concurrency=1, max_queue=5)
    gate = threading.Event()
    holder = asyncio.create_task(runner.run(gate.wait))
    await asyncio.sleep(0.02)
    token = context.set_deadline(context.Deadline.after(0.1))
    try:
        t0 = time.monotonic()
        with pytest.raises(BusyError):
            await runner.run(lambda: "never")
        assert time.monotonic() - t0 < 1.0
    finally:
        context.reset_deadline(token)
    assert runner.admitted == 1  # the waiter left the queue
    gate.set()
    await holder


async def test_cancelled_caller_keeps_slot_until_thread_ends():
    runner = InferenceRunner("t-cancel", max_concurrency=1, max_queue=0)
    gate = threading.Event()
    task = asyncio.create_task(runner.run(gate.wait))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the thread still runs: a new call must still be refused
    assert runner.admitted == 1
    with pytest.raises(BusyError):
        await runner.run(lambda: 1)
    gate.set()
    for _ in range(100):
        if runner.admitted == 0:
            break
        await asyncio.sleep(0.01)
    assert runner.admitted == 0
    assert await runner.run(lambda: 42) == 42


async def test_iterate_yields_in_order_holds_one_slot_and_releases_on_break():
    runner = InferenceRunner("t-iter", max_concurrency=1, max_queue=0)
    threads = set()

    def gen(n):
        for i in range(n):
            threads.add(threading.current_thread().name)
            yield i

    assert [x async for x in runner.iterate(gen, 4)] == [0, 1, 2, 3]
    assert all(name.startswith("infer-t-iter") for name in threads)

    agen = runner.iterate(gen, 100)
    async for x in agen:
        assert runner.admitted == 1
        with pytest.raises(BusyError):
            await runner.run(lambda: 0)
        if x == 2:
            break
    await agen.aclose()
    for _ in range(100):  # the generator is closed in the worker thread, then the slot comes back
        if runner.admitted == 0:
            break
        await asyncio.sleep(0.01)
    assert runner.admitted == 0


async def test_a_stream_stopped_early_is_closed_in_a_worker_thread_before_its_slot_is_free():
    """The generator's cleanup (the llm engine cancels generation in its llama.cpp process there) runs off the
    loop, after the step in flight, and the next call gets the slot only once it is done."""
    runner = InferenceRunner("t-close", max_concurrency=1, max_queue=1)
    closed_in: list[str] = []
    cleanup = threading.Event()

    def gen():
        try:
            for i in range(100):
                yield i
        finally:
            cleanup.wait(5)  # slow cleanup
            closed_in.append(threading.current_thread().name)

    agen = runner.iterate(gen)
    assert await agen.__anext__() == 0
    await agen.aclose()
    assert runner.admitted == 1  # still held: the cleanup has not finished
    waiter = asyncio.create_task(runner.run(lambda: "next"))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    cleanup.set()
    assert await waiter == "next"
    assert closed_in and closed_in[0].startswith("infer-t-close")
    assert runner.admitted == 0


async def test_correlation_id_reaches_the_worker_thread():
    runner = InferenceRunner("t-cid")
    token = context.set_correlation_id("cid-123")
    try:
        assert await runner.run(context.get_correlation_id) == "cid-123"
    finally:
        context.reset_correlation_id(token)


async def test_load_in_thread_returns_raises_and_leaves_no_thread_behind():
    def load(x):
        return threading.current_thread().name, x * 2

    name, value = await load_in_thread(load, 21)
    assert value == 42 and name.startswith("load-")
    assert not any(t.name == name for t in threading.enumerate())  # the loading thread has exited

    def broken():
        raise FileNotFoundError("no weights")

    with pytest.raises(FileNotFoundError, match="no weights"):
        await load_in_thread(broken)
