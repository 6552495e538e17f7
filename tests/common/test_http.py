"""services.common.http against real uvicorn servers: retries, deadlines, breakers, fallbacks, headers."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import REGISTRY

from services.common import context
from services.common.context import Deadline
from services.common.errors import DeadlineExceededError, UpstreamFailedError, UpstreamUnavailableError
from services.common.http import (
    CircuitBreaker,
    CircuitOpenError,
    FallbackClient,
    ServiceClient,
    breaker_for,
    close_shared_client,
    shared_async_client,
)
from services.common.metrics import service
from services.common.settings import BaseServiceSettings
from services.common.testing import serve_in_thread

# --- test servers -------------------------------------------------------------------------------------------------

# PLANS[key]: what /plan/{key} answers, one step per hit (then 200). HITS[(server, key)]: hits per server.
PLANS: dict[str, list[dict[str, Any]]] = {}
HITS: Counter[tuple[str, str]] = Counter()
CODES = {422: "invalid_request", 500: "engine_failed", 503: "engine_not_ready"}


def make_app(name: str) -> FastAPI:
    app = FastAPI()

    @app.api_route("/ok", methods=["GET", "POST"])
    async def ok() -> dict[str, Any]:
        return {"served_by": name}

    @app.api_route("/echo", methods=["GET", "POST"])
    async def echo(request: Request) -> dict[str, Any]:
        return {"served_by": name, "headers": dict(request.headers)}

    @app.get("/slow")
    async def slow(delay: float = 1.5, only: str | None = None) -> dict[str, Any]:
        if only in (None, name):
            await asyncio.sleep(delay)
        return {"served_by": name}

    @app.api_route("/plan/{key}", methods=["GET", "POST"])
    async def plan(key: str) -> Any:
        HITS[(name, key)] += 1
        steps = PLANS.get(key)
        step = steps.pop(0) if steps else {}
        if step.get("delay"):
            await asyncio.sleep(step["delay"])
        status = step.get("status", 200)
        if status < 400:
            return {"served_by": name}
        headers = {"Retry-After": step["retry_after"]} if "retry_after" in step else None
        if "text" in step:
            return PlainTextResponse(step["text"], status_code=status, headers=headers)
        error = {
            "message": step.get("message", f"planned {status}"),
            "type": "server_error" if status >= 500 else "invalid_request_error",
            "param": None,
            "code": CODES.get(status, "engine_failed"),
            "retryable": step.get("retryable", status == 503),
            "correlation_id": None,
        }
        return JSONResponse({"error": error}, status_code=status, headers=headers)

    return app


def plan(*steps: int | dict[str, Any]) -> str:
    """A fresh /plan key answering ``steps`` (a status or a step dict) in order, then 200."""
    key = uuid.uuid4().hex[:10]
    PLANS[key] = [{"status": s} if isinstance(s, int) else s for s in steps]
    return key


def name(prefix: str = "svc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def metric(metric_name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric_name, {"service": service(), **labels}) or 0.0


@contextmanager
def deadline(value: Deadline | None) -> Iterator[None]:
    token = context.set_deadline(value)
    try:
        yield
    finally:
        token.var.reset(token)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve_in_thread(make_app("upstream")) as url:
        yield url


@pytest.fixture(scope="module")
def backup() -> Iterator[str]:
    with serve_in_thread(make_app("backup")) as url:
        yield url


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def down() -> str:
    return closed_port_url()


@pytest.fixture(autouse=True)
async def _close_pool() -> Any:
    yield
    await close_shared_client()


def client(target: str, url: str, **kw: Any) -> ServiceClient:
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("retries", 0)
    kw.setdefault("backoff_s", 0.01)
    return ServiceClient(target, url, **kw)


def open_breaker(target: str, clock: FakeClock, threshold: int = 2) -> CircuitBreaker:
    return CircuitBreaker(target, failure_threshold=threshold, reset_s=5.0, clock=clock)


# --- plain calls, headers, deadlines -----------------------------------------------------------------------------


async def test_ok_returns_response_named_by_target(upstream: str) -> None:
    target = name()
    response = await client(target, upstream).get("/ok")
    assert response.status_code == 200
    assert response.json() == {"served_by": "upstream"}
    assert response.extensions["target"] == target
    assert metric("client_requests_total", target=target, outcome="ok") == 1


async def test_correlation_id_auth_and_deadline_headers_sent(upstream: str) -> None:
    token = context.set_correlation_id("corr-123")
    try:
        response = await client(name(), upstream, auth_token="s3cret", timeout_s=2.0).get("/echo")
    finally:
        token.var.reset(token)
    headers = response.json()["headers"]
    assert headers["x-correlation-id"] == "corr-123"
    assert headers["authorization"] == "Bearer s3cret"
    assert 1500 < int(headers["x-deadline-ms"]) <= 2000

    headers = (await client(name(), upstream).get("/echo")).json()["headers"]
    assert "authorization" not in headers and "x-correlation-id" not in headers


async def test_incoming_deadline_caps_long_client_timeout(upstream: str) -> None:
    with deadline(Deadline.after(1.0)):
        headers = (await client(name(), upstream, timeout_s=30.0).get("/echo")).json()["headers"]
    assert 0 < int(headers["x-deadline-ms"]) <= 1000


async def test_incoming_deadline_bounds_a_slow_call(upstream: str) -> None:
    target = name()
    started = time.monotonic()
    with deadline(Deadline.after(0.3)), pytest.raises(DeadlineExceededError):
        await client(target, upstream, timeout_s=30.0, retries=3).get("/slow")
    assert time.monotonic() - started < 1.0
    assert metric("client_requests_total", target=target, outcome="timeout") == 1


async def test_spent_deadline_raises_without_calling(upstream: str) -> None:
    key = plan()
    with deadline(Deadline(time.monotonic() - 1)), pytest.raises(DeadlineExceededError):
        await client(name(), upstream, retries=3).get(f"/plan/{key}")
    assert HITS[("upstream", key)] == 0


# --- retries and error mapping --------------------------------------------------------------------------------


async def test_get_retried_on_flaky_503_then_succeeds(upstream: str) -> None:
    key = plan(503, 503)
    response = await client(name(), upstream, retries=2).get(f"/plan/{key}")
    assert response.status_code == 200
    assert HITS[("upstream", key)] == 3


async def test_retries_exhausted_raise_the_upstream_error(upstream: str) -> None:
    key = plan(503, 503, 503)
    target = name()
    with pytest.raises(UpstreamFailedError) as info:
        await client(target, upstream, retries=1).get(f"/plan/{key}")
    assert HITS[("upstream", key)] == 2
    assert info.value.retryable and info.value.upstream_status == 503
    assert info.value.upstream_code == "engine_not_ready"  # type: ignore[attr-defined]
    assert info.value.message == f"{target}: planned 503"


async def test_post_not_retried_unless_idempotent(upstream: str) -> None:
    key = plan(503)
    with pytest.raises(UpstreamFailedError) as info:
        await client(name(), upstream, retries=2).post(f"/plan/{key}", json={"x": 1})
    assert info.value.retryable
    assert HITS[("upstream", key)] == 1

    key = plan(503)
    response = await client(name(), upstream, retries=2).post(f"/plan/{key}", json={"x": 1}, idempotent=True)
    assert response.status_code == 200
    assert HITS[("upstream", key)] == 2


async def test_retryable_body_overrides_status(upstream: str) -> None:
    key = plan({"status": 500, "retryable": True})  # 500 alone is not retried; the body says it may be
    assert (await client(name(), upstream, retries=1).get(f"/plan/{key}")).status_code == 200
    assert HITS[("upstream", key)] == 2


async def test_4xx_not_retried_and_does_not_open_breaker(upstream: str) -> None:
    target = name()
    breaker = CircuitBreaker(target, failure_threshold=2, reset_s=60.0)
    svc = client(target, upstream, retries=3, breaker=breaker)
    key = plan(422, 422, 422)
    for _ in range(3):
        with pytest.raises(UpstreamFailedError) as info:
            await svc.get(f"/plan/{key}")
        assert not info.value.retryable
        assert info.value.upstream_status == 422
        assert info.value.upstream_code == "invalid_request"  # type: ignore[attr-defined]
    assert HITS[("upstream", key)] == 3
    assert breaker.state == "closed"


async def test_non_json_error_body_keeps_status_and_excerpt(upstream: str) -> None:
    target = name()
    key = plan({"status": 500, "text": "boom: kernel on fire"})
    with pytest.raises(UpstreamFailedError) as info:
        await client(target, upstream, retries=2).get(f"/plan/{key}")
    assert info.value.message == f"{target}: HTTP 500: boom: kernel on fire"
    assert info.value.upstream_code is None  # type: ignore[attr-defined]
    assert not info.value.retryable
    assert HITS[("upstream", key)] == 1


async def test_retry_after_is_honoured(upstream: str) -> None:
    key = plan({"status": 503, "retry_after": "1"})
    started = time.monotonic()
    response = await client(name(), upstream, retries=1).get(f"/plan/{key}")
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.95  # the 10 ms backoff alone would have been far quicker
    assert HITS[("upstream", key)] == 2


async def test_retry_after_beyond_the_deadline_gives_up_at_once(upstream: str) -> None:
    key = plan({"status": 503, "retry_after": "30"})
    started = time.monotonic()
    with pytest.raises(UpstreamFailedError) as info:
        await client(name(), upstream, retries=3, timeout_s=1.0).get(f"/plan/{key}")
    assert time.monotonic() - started < 0.5
    assert info.value.retry_after_s == 30
    assert HITS[("upstream", key)] == 1


async def test_unreachable_target(down: str) -> None:
    target = name()
    with pytest.raises(UpstreamUnavailableError) as info:
        await client(target, down, retries=2).get("/ok")
    assert info.value.message.startswith(f"{target} unreachable: ")
    assert metric("client_requests_total", target=target, outcome="error") == 3  # retried: GET, transport error


# --- circuit breaker --------------------------------------------------------------------------------------------


async def test_breaker_opens_after_threshold_and_refuses_without_network(upstream: str) -> None:
    target, clock = name(), FakeClock()
    svc = client(target, upstream, breaker=open_breaker(target, clock))
    key = plan(500, 500, 500)
    for _ in range(2):
        with pytest.raises(UpstreamFailedError):
            await svc.get(f"/plan/{key}")
    assert svc.breaker is not None and svc.breaker.state == "open"
    assert metric("client_circuit_state", target=target) == 2
    with pytest.raises(CircuitOpenError) as info:
        await svc.get(f"/plan/{key}")
    assert isinstance(info.value, UpstreamUnavailableError)
    assert HITS[("upstream", key)] == 2
    assert metric("client_requests_total", target=target, outcome="rejected") == 1


async def test_breaker_opens_on_connection_refused(down: str) -> None:
    target, clock = name(), FakeClock()
    svc = client(target, down, breaker=open_breaker(target, clock))
    for _ in range(2):
        with pytest.raises(UpstreamUnavailableError) as info:
            await svc.get("/ok")
        assert not isinstance(info.value, CircuitOpenError)
    with pytest.raises(CircuitOpenError):
        await svc.get("/ok")


async def test_half_open_lets_one_probe_through_and_success_closes(upstream: str) -> None:
    target, clock = name(), FakeClock()
    breaker = open_breaker(target, clock)
    svc = client(target, upstream, breaker=breaker)
    key = plan(500, 500, {"delay": 0.3})  # the third hit (the probe) succeeds slowly
    for _ in range(2):
        with pytest.raises(UpstreamFailedError):
            await svc.get(f"/plan/{key}")
    clock.now += 4.9
    with pytest.raises(CircuitOpenError):
        await svc.get(f"/plan/{key}")
    clock.now += 0.1

    probe = asyncio.create_task(svc.get(f"/plan/{key}"))
    await asyncio.sleep(0.1)
    assert breaker.state == "half_open"
    assert metric("client_circuit_state", target=target) == 1
    with pytest.raises(CircuitOpenError):  # a concurrent caller during the probe is refused
        await svc.get(f"/plan/{key}")
    assert (await probe).status_code == 200
    assert HITS[("upstream", key)] == 3
    assert breaker.state == "closed"
    assert metric("client_circuit_state", target=target) == 0
    assert (await svc.get(f"/plan/{key}")).status_code == 200


async def test_failed_probe_reopens_and_restarts_the_timer(upstream: str) -> None:
    target, clock = name(), FakeClock()
    breaker = open_breaker(target, clock)
    svc = client(target, upstream, breaker=breaker)
    key = plan(500, 500, 500)
    for _ in range(2):
        with pytest.raises(UpstreamFailedError):
            await svc.get(f"/plan/{key}")
    clock.now += 5
    with pytest.raises(UpstreamFailedError):  # the probe reaches the target and fails
        await svc.get(f"/plan/{key}")
    assert breaker.state == "open" and HITS[("upstream", key)] == 3
    clock.now += 4
    with pytest.raises(CircuitOpenError):
        await svc.get(f"/plan/{key}")
    clock.now += 1
    assert (await svc.get(f"/plan/{key}")).status_code == 200
    assert breaker.state == "closed" and HITS[("upstream", key)] == 4


async def test_cancelled_probe_does_not_wedge_half_open(upstream: str) -> None:
    target, clock = name(), FakeClock()
    breaker = open_breaker(target, clock, threshold=1)
    svc = client(target, upstream, breaker=breaker)
    with pytest.raises(UpstreamFailedError):
        await svc.get(f"/plan/{plan(500)}")
    clock.now += 5
    probe = asyncio.create_task(svc.get("/slow", params={"delay": 0.5}))
    await asyncio.sleep(0.05)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert (await svc.get("/ok")).status_code == 200
    assert breaker.state == "closed"


# --- fallback ------------------------------------------------------------------------------------------------------


async def test_fallback_serves_when_primary_is_down(down: str, backup: str) -> None:
    primary, secondary = name("primary"), name("fallback")
    chain = FallbackClient(client(primary, down), client(secondary, backup))
    response = await chain.get("/ok")
    assert response.json() == {"served_by": "backup"}
    assert response.extensions["target"] == secondary
    assert str(response.request.url).startswith(backup)
    labels = {"engine_from": primary, "engine_to": secondary}
    assert metric("engine_fallbacks_total", **labels, reason="unavailable") == 1


async def test_fallback_serves_when_primary_times_out(upstream: str, backup: str) -> None:
    primary, secondary = name("primary"), name("fallback")
    chain = FallbackClient(client(primary, upstream, timeout_s=0.3), client(secondary, backup))
    started = time.monotonic()
    response = await chain.get("/slow", params={"delay": 2, "only": "upstream"}, timeout_s=3.0)
    assert time.monotonic() - started < 1.5
    assert response.json() == {"served_by": "backup"}
    assert response.extensions["target"] == secondary
    labels = {"engine_from": primary, "engine_to": secondary}
    assert metric("engine_fallbacks_total", **labels, reason="timeout") == 1


async def test_fallback_on_5xx_and_on_open_circuit(upstream: str, backup: str) -> None:
    primary, secondary, clock = name("primary"), name("fallback"), FakeClock()
    chain = FallbackClient(
        client(primary, upstream, breaker=open_breaker(primary, clock, threshold=1)), client(secondary, backup)
    )
    key = plan(500)
    assert (await chain.get(f"/plan/{key}")).json() == {"served_by": "backup"}
    assert (await chain.get(f"/plan/{key}")).json() == {"served_by": "backup"}
    assert HITS[("upstream", key)] == 1  # the second call never reached the open primary
    labels = {"engine_from": primary, "engine_to": secondary}
    assert metric("engine_fallbacks_total", **labels, reason="error") == 1
    assert metric("engine_fallbacks_total", **labels, reason="circuit_open") == 1


async def test_no_fallback_on_non_retryable_4xx(upstream: str, backup: str) -> None:
    chain = FallbackClient(client(name("primary"), upstream), client(name("fallback"), backup))
    key = plan(422)
    with pytest.raises(UpstreamFailedError) as info:
        await chain.post(f"/plan/{key}", json={})
    assert info.value.upstream_status == 422
    assert HITS[("upstream", key)] == 1 and HITS[("backup", key)] == 0


async def test_both_down_raise_one_error_naming_both(down: str) -> None:
    primary, secondary = name("primary"), name("fallback")
    chain = FallbackClient(client(primary, down), client(secondary, closed_port_url()))
    with pytest.raises(UpstreamUnavailableError) as info:
        await chain.get("/ok")
    assert primary in info.value.message and secondary in info.value.message
    assert info.value.message.count("unreachable") == 2


async def test_fallback_timeout_bounds_the_whole_chain(upstream: str, backup: str) -> None:
    primary, secondary = name("primary"), name("fallback")
    chain = FallbackClient(client(primary, upstream, timeout_s=0.2), client(secondary, backup))
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as info:  # both slow: the fallback gets only what is left
        await chain.get("/slow", params={"delay": 2}, timeout_s=0.5)
    assert 0.45 < time.monotonic() - started < 1.0
    assert primary in info.value.message and secondary in info.value.message
    assert metric("engine_fallbacks_total", engine_from=primary, engine_to=secondary, reason="timeout") == 0


# --- construction -------------------------------------------------------------------------------------------------


async def test_from_settings_and_shared_pool() -> None:
    settings = BaseServiceSettings(
        _env_file=None,
        service_auth_token="tok",
        http_timeout_s=3.0,
        http_retries=1,
        breaker_failure_threshold=7,
        breaker_reset_s=2.0,
    )
    target = name()
    a = ServiceClient.from_settings(target, "http://example.invalid/", settings)
    b = ServiceClient.from_settings(target, "http://example.invalid", settings)
    assert (a.timeout_s, a.retries, a.auth_token, a.base_url) == (3.0, 1, "tok", "http://example.invalid")
    assert a.breaker is b.breaker is breaker_for(target)
    assert a.breaker is not None and (a.breaker.failure_threshold, a.breaker.reset_s) == (7, 2.0)
    pool = shared_async_client()
    assert a.client is b.client is pool and isinstance(pool, httpx.AsyncClient)
    await close_shared_client()
    assert pool.is_closed and shared_async_client() is not pool
