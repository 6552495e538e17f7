"""Calling other services: one pooled client, nested deadlines, bounded retries, circuit breakers, fallbacks.

Rules every service-to-service call follows (`ServiceClient.request`):

- **One pool per process.** `shared_async_client()` lazily creates one `httpx.AsyncClient` (one per event loop,
  which in a service means one); every `ServiceClient` uses it unless handed its own. The app's shutdown calls
  `close_shared_client()`. The client ignores proxy environment variables: fleet traffic goes direct.
- **Deadlines nest.** A call's deadline is the incoming request's deadline (`context.get_deadline()`) tightened
  by the call's timeout (``timeout_s`` argument, else the client's). Each attempt may use what is left of it,
  and tells the callee so in ``X-Deadline-Ms``. A spent budget raises `DeadlineExceededError` with no network
  call. Since an attempt may use the whole remaining budget, a timed-out call is not retried.
- **Headers.** ``X-Correlation-ID`` is forwarded from the context; ``Authorization: Bearer <token>`` is sent when
  a token is configured.
- **Retries.** Only idempotent calls (GET, HEAD, PUT, DELETE, OPTIONS; others only with ``idempotent=True``),
  only on retryable failures (connect errors and resets, statuses in `RETRYABLE_STATUS`, error bodies saying
  ``"retryable": true``). The wait is jittered exponential backoff, or the upstream's ``Retry-After`` when it
  sent one; a retry whose wait would not leave any budget is not made and the last error is raised instead.
  A non-retryable 4xx is final.
- **Errors.** Callers only see `ServiceError`s. An error answer becomes `UpstreamFailedError` with
  ``message = "<target>: <upstream message>"``, ``retryable`` as the upstream said (else by status),
  ``upstream_status`` and ``upstream_code`` (our ``error.code``, or None for foreign bodies). Connect errors
  -> `UpstreamUnavailableError` (``"<target> unreachable: ..."``); an open circuit -> `CircuitOpenError`
  (an `UpstreamUnavailableError`); timeouts -> `DeadlineExceededError`.
- **Circuit breaker per target** (`CircuitBreaker`, shared per target by `breaker_for`). Consecutive failures
  (transport errors, timeouts, 5xx; a 4xx means the target is healthy) open it; an open breaker refuses at once;
  after ``reset_s`` exactly one probe call goes through (half-open) and its result closes or reopens it.
- **Fallback.** `FallbackClient(primary, fallback)` has the same interface. The primary runs within its own
  ``timeout_s`` so time is left; on anything but a non-retryable 4xx the fallback gets what is left of the
  deadline. ``response.extensions["target"]`` names the target that answered (on every `ServiceClient` reply).

Bodies are re-sent on retries and fallbacks: pass ``bytes``, not file objects that a first attempt consumes.
Metrics: ``client_requests_total{outcome=ok|error|timeout|rejected}`` and ``client_request_duration_seconds``
per attempt, ``client_circuit_state`` per target, ``engine_fallbacks_total`` per fallback that served.
"""

from __future__ import annotations

import asyncio
import copy
import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import httpx

from services.common import context
from services.common.errors import (
    RETRYABLE_STATUS,
    DeadlineExceededError,
    ServiceError,
    UpstreamFailedError,
    UpstreamUnavailableError,
)
from services.common.metrics import CIRCUIT_STATE, CLIENT_DURATION, CLIENT_REQUESTS, FALLBACKS, service

if TYPE_CHECKING:
    from services.common.settings import BaseServiceSettings

log = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=30.0)
MAX_BACKOFF_S = 5.0
_EXCERPT_CHARS = 200

# --- one pooled client per process ------------------------------------------------------------------------------

_shared: httpx.AsyncClient | None = None
_shared_loop: asyncio.AbstractEventLoop | None = None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def shared_async_client() -> httpx.AsyncClient:
    """The process's pooled client, created on first use (again if closed, or if used from another event loop)."""
    global _shared, _shared_loop
    loop = _running_loop()
    if _shared is None or _shared.is_closed or (loop is not None and _shared_loop not in (None, loop)):
        _shared = httpx.AsyncClient(limits=POOL_LIMITS, timeout=httpx.Timeout(10.0), trust_env=False)
        _shared_loop = loop
    elif _shared_loop is None:
        _shared_loop = loop
    return _shared


async def close_shared_client() -> None:
    """Close the pooled client (app shutdown); the next call creates a fresh one."""
    global _shared, _shared_loop
    client, _shared, _shared_loop = _shared, None, None
    if client is not None and not client.is_closed:
        await client.aclose()


# --- circuit breaker --------------------------------------------------------------------------------------------

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
_STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitOpenError(UpstreamUnavailableError):
    """Refused locally: the target's circuit breaker is open (or its one probe is in flight)."""


class CircuitBreaker:
    """Consecutive-failure breaker for one target: closed -> open -> half-open (one probe) -> closed | open.

    Callers ask `allow()` before a call and report `record_success()` / `record_failure()` after it; a probe that
    ends without a verdict (cancelled) must call `release()` so the next caller can probe. Not thread-safe: it
    lives on the event loop. The state is exported to ``client_circuit_state{service,target}``.
    """

    def __init__(
        self,
        target: str,
        failure_threshold: int = 5,
        reset_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self._clock = clock
        self.failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._state = CLOSED
        self._export()

    @property
    def state(self) -> str:
        """``closed``, ``half_open`` or ``open``."""
        return self._state

    def allow(self) -> bool:
        """May a call go out now? In half-open, True for exactly one caller until its verdict is recorded."""
        if self._state == CLOSED:
            return True
        if self._state == OPEN:
            if self._clock() - self._opened_at < self.reset_s:
                return False
            self._set(HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        """The target answered (2xx-4xx): close."""
        self.failures = 0
        self._probing = False
        if self._state != CLOSED:
            log.info("circuit closed", extra={"target": self.target})
            self._set(CLOSED)

    def record_failure(self) -> None:
        """Transport error, timeout or 5xx: count it; open at the threshold, reopen after a failed probe."""
        self._probing = False
        self.failures += 1
        if self._state == HALF_OPEN or (self._state == CLOSED and self.failures >= self.failure_threshold):
            self._opened_at = self._clock()
            log.warning("circuit open", extra={"target": self.target, "failures": self.failures})
            self._set(OPEN)

    def release(self) -> None:
        """The probe ended without a verdict: let the next caller probe."""
        self._probing = False

    def _set(self, state: str) -> None:
        self._state = state
        self._export()

    def _export(self) -> None:
        CIRCUIT_STATE.labels(service(), self.target).set(_STATE_VALUE[self._state])


_breakers: dict[str, CircuitBreaker] = {}


def breaker_for(target: str, failure_threshold: int = 5, reset_s: float = 10.0) -> CircuitBreaker:
    """The process's breaker for ``target`` (created on first use, then shared by every client of it)."""
    breaker = _breakers.get(target)
    if breaker is None:
        breaker = _breakers[target] = CircuitBreaker(target, failure_threshold, reset_s)
    return breaker


# --- the client -----------------------------------------------------------------------------------------------


class ServiceClient:
    """Calls one target service at ``base_url`` following the module's rules."""

    def __init__(
        self,
        target: str,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 0.1,
        breaker: CircuitBreaker | None = None,
        auth_token: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.target = target
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.breaker = breaker
        self.auth_token = auth_token
        self._client = client

    @classmethod
    def from_settings(cls, target: str, base_url: str, settings: BaseServiceSettings) -> ServiceClient:
        """Timeout, retries, auth token and the target's shared breaker from the service's settings."""
        return cls(
            target,
            base_url,
            timeout_s=settings.http_timeout_s,
            retries=settings.http_retries,
            breaker=breaker_for(target, settings.breaker_failure_threshold, settings.breaker_reset_s),
            auth_token=settings.secret_token(),
        )

    @property
    def client(self) -> httpx.AsyncClient:
        return self._client if self._client is not None else shared_async_client()

    def __repr__(self) -> str:
        return f"ServiceClient({self.target!r}, {self.base_url!r})"

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("POST", path, **kw)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send the request; return a 2xx/3xx response or raise a `ServiceError` (see the module docstring)."""
        method = method.upper()
        deadline = context.effective_deadline(self.timeout_s if timeout_s is None else timeout_s)
        assert deadline is not None  # a timeout is always given
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        attempts = 1 + (self.retries if idempotent else 0)
        send = {"json": json, "content": content, "data": data, "files": files, "params": params}
        for attempt in range(attempts):
            try:
                return await self._attempt(method, path, deadline, headers, send)
            except ServiceError as exc:
                if attempt + 1 >= attempts or not exc.retryable or isinstance(exc, CircuitOpenError):
                    raise
                delay = self._backoff(attempt, exc.retry_after_s)
                if delay >= deadline.remaining():
                    raise  # the wait would eat the budget: the caller gets the real error, now
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        delay = min(MAX_BACKOFF_S, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
        return delay if retry_after_s is None else max(delay, retry_after_s)

    def _headers(self, extra: Mapping[str, str] | None, budget_s: float) -> httpx.Headers:
        headers = httpx.Headers()
        correlation_id = context.get_correlation_id()
        if correlation_id:
            headers[context.CORRELATION_HEADER] = correlation_id
        if self.auth_token:
            headers["Authorization"] = f"Bearer {self.auth_token}"
        if extra:
            headers.update(extra)
        headers[context.DEADLINE_HEADER] = str(int(budget_s * 1000))
        return headers

    async def _attempt(
        self,
        method: str,
        path: str,
        deadline: context.Deadline,
        extra_headers: Mapping[str, str] | None,
        send: dict[str, Any],
    ) -> httpx.Response:
        labels = (service(), self.target)
        budget = deadline.remaining()
        if budget <= 0:
            CLIENT_REQUESTS.labels(*labels, "timeout").inc()
            raise DeadlineExceededError(f"{self.target}: deadline exceeded before the call")
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            CLIENT_REQUESTS.labels(*labels, "rejected").inc()
            raise CircuitOpenError(f"{self.target} unreachable: circuit open")
        probe = breaker is not None and breaker.state == HALF_OPEN
        url = f"{self.base_url}/{path.lstrip('/')}"
        healthy: bool | None = None  # the breaker's verdict; None: no verdict (cancelled, bad arguments)
        outcome = "error"
        started = time.perf_counter()
        try:
            try:
                async with asyncio.timeout(budget):
                    response = await self.client.request(
                        method, url, headers=self._headers(extra_headers, budget), timeout=budget, **send
                    )
            except (httpx.TimeoutException, TimeoutError) as exc:
                healthy, outcome = False, "timeout"
                raise DeadlineExceededError(f"{self.target}: no answer within {budget:.2f}s") from exc
            except httpx.TransportError as exc:
                healthy = False
                raise UpstreamUnavailableError(f"{self.target} unreachable: {_describe(exc)}") from exc
            except httpx.HTTPError as exc:  # e.g. a body that does not decode
                healthy = False
                raise UpstreamFailedError(f"{self.target}: {_describe(exc)}") from exc
            response.extensions["target"] = self.target
            healthy = response.status_code < 500
            if response.status_code < 400:
                outcome = "ok"
                return response
            raise _error_from_response(self.target, response)
        finally:
            CLIENT_DURATION.labels(*labels).observe(time.perf_counter() - started)
            if healthy is not None:
                CLIENT_REQUESTS.labels(*labels, outcome).inc()
            if breaker is not None:
                if healthy is True:
                    breaker.record_success()
                elif healthy is False:
                    breaker.record_failure()
                elif probe:
                    breaker.release()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 3] + "..."


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _error_from_response(target: str, response: httpx.Response) -> UpstreamFailedError:
    status = response.status_code
    retryable = status in RETRYABLE_STATUS
    code: str | None = None
    message = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # our shape (and OpenAI's)
        message = _excerpt(str(error.get("message") or ""))
        code = error.get("code") if isinstance(error.get("code"), str) else None
        if isinstance(error.get("retryable"), bool):
            retryable = error["retryable"]
    elif isinstance(body, dict) and "detail" in body:  # FastAPI's default shape
        message = f"HTTP {status}: {_excerpt(str(body['detail']))}"
    if not message:
        text = _excerpt(response.text)
        message = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    return UpstreamFailedError(
        f"{target}: {message}",
        retryable=retryable,
        upstream_status=status,
        upstream_code=code,
        retry_after_s=_retry_after(response),
    )


# --- fallback chain -------------------------------------------------------------------------------------------


class FallbackClient:
    """Primary, then fallback: the same ``request``/``get``/``post`` interface as `ServiceClient`.

    ``timeout_s`` given to `request` bounds the whole chain; the primary is also bounded by its own
    ``timeout_s`` so the fallback has time left. A fallback that served counts in
    ``engine_fallbacks_total{engine_from,engine_to,reason}``; when both fail, one error names both failures.
    """

    def __init__(self, primary: ServiceClient, fallback: ServiceClient) -> None:
        self.primary = primary
        self.fallback = fallback

    @property
    def target(self) -> str:
        return self.primary.target

    def __repr__(self) -> str:
        return f"FallbackClient({self.primary!r}, {self.fallback!r})"

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("POST", path, **kw)

    async def request(self, method: str, path: str, *, timeout_s: float | None = None, **kw: Any) -> httpx.Response:
        previous = context.get_deadline()
        if timeout_s is not None:
            context.set_deadline(context.effective_deadline(timeout_s))
        try:
            try:
                return await self.primary.request(method, path, **kw)
            except ServiceError as exc:
                if not _worth_falling_back(exc):
                    raise
                first = exc
            reason = fallback_reason(first)
            log.warning(
                "falling back",
                extra={"target": self.primary.target, "fallback": self.fallback.target, "reason": reason},
            )
            try:
                response = await self.fallback.request(method, path, **kw)
            except ServiceError as second:
                raise _both_failed(self.primary.target, first, self.fallback.target, second) from second
            FALLBACKS.labels(service(), self.primary.target, self.fallback.target, reason).inc()
            return response
        finally:
            if timeout_s is not None:
                context.set_deadline(previous)


def _worth_falling_back(exc: ServiceError) -> bool:
    """Everything but a non-retryable 4xx (a bad request fails the same way anywhere)."""
    status = getattr(exc, "upstream_status", None)
    return exc.retryable or status is None or status >= 500


def fallback_reason(exc: ServiceError) -> str:
    """The `reason` label of engine_fallbacks_total for a failure: circuit_open|unavailable|timeout|error."""
    if isinstance(exc, CircuitOpenError):
        return "circuit_open"
    if isinstance(exc, UpstreamUnavailableError):
        return "unavailable"
    if isinstance(exc, DeadlineExceededError):
        return "timeout"
    return "error"


def _both_failed(primary: str, first: ServiceError, fallback: str, second: ServiceError) -> ServiceError:
    """One error naming both failures, of the fallback error's class (an open circuit reads as unavailable)."""
    message = f"{primary} failed ({first.message}); fallback {fallback} failed ({second.message})"
    if isinstance(second, CircuitOpenError):
        return UpstreamUnavailableError(message)
    combined = copy.copy(second)  # keeps retryable, upstream_status, upstream_code, Retry-After
    combined.message = message
    combined.args = (message,)
    return combined
