"""Per-client rate limiting with slowapi, shared by guardrails (/validate/input) and the orchestrator (its turn routes).

    limiter = build_limiter(storage_uri, service_token=settings.secret_token(), key_prefix="orchestrator")
    install_rate_limit(app, limiter)             # 429 in the fleet's error shape, with Retry-After

    @limiter.limit(settings.rate_limit)
    async def limited(request: Request, ...): ...   # call it from the route (see guardrails' /validate/input)

Who "the client" is, first match wins (`client_key`):

1. the caller's own bearer token (``Authorization: Bearer <token>``), hashed; the fleet's
   SERVICE_AUTH_TOKEN is skipped, because it names the calling *service*, not a client;
2. ``X-Client-Id``: the authenticated client a fleet service calls on behalf of;
3. ``X-Session-Id``;
4. the session id the route read from the body (``request.state.rate_limit_session``, set before the
   limited call);
5. the peer IP address.

Headers 2-4 are asserted by the caller: with SERVICE_AUTH_TOKEN set only fleet services can send them; an
open service lets a caller pick a new id per request, so keep limited routes behind the token in production.

Counts live in memory (per process) or, with a ``redis://`` storage URL, in Redis, so replicas share them.
The fixed-window strategy allows exactly N calls per window; the N+1th gets 429 with ``Retry-After`` =
seconds until the window resets. If Redis goes away, slowapi counts in memory until it is back.
slowapi calls the storage synchronously (one Redis round trip per limited request, on the event loop).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from slowapi import Limiter
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address

from services.common import context
from services.common.app import error_response
from services.common.errors import RateLimitedError

log = logging.getLogger(__name__)

SESSION_STATE = "rate_limit_session"
"""``request.state`` attribute a route sets to the body's session id before calling the limited function."""


def client_key_func(service_token: str | None) -> Callable[[Request], str]:
    """The key function: who the caller is, by the precedence in the module docstring."""

    def client_key(request: Request) -> str:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else ""
        if token and token != service_token:
            return "bearer:" + hashlib.sha256(token.encode()).hexdigest()[:16]
        for header, kind in (("x-client-id", "client"), ("x-session-id", "session")):
            ident = request.headers.get(header, "").strip()
            if ident:
                return f"{kind}:{ident[:128]}"
        session = getattr(request.state, SESSION_STATE, None)
        if session:
            return f"session:{str(session)[:128]}"
        return "ip:" + (get_remote_address(request) or "unknown")

    return client_key


def build_limiter(storage_uri: str = "memory://", *, service_token: str | None = None,
                  key_prefix: str = "") -> Limiter:
    """A slowapi `Limiter` keyed by `client_key_func`, counting in ``storage_uri`` (``memory://`` or
    ``redis://host:port/db``). ``service_token`` is the fleet's SERVICE_AUTH_TOKEN (``settings.secret_token()``),
    which never names a client; ``key_prefix`` separates services sharing one Redis."""
    return Limiter(
        key_func=client_key_func(service_token),
        storage_uri=storage_uri,
        strategy="fixed-window",
        key_prefix=key_prefix,
        in_memory_fallback_enabled=True,
        headers_enabled=False,
    )


def retry_after_s(limiter: Limiter, request: Request) -> int:
    """Whole seconds until the window of the limit this request hit resets (at least 1)."""
    current = getattr(request.state, "view_rate_limit", None)
    if not current:
        return 1
    try:
        reset_at, _remaining = limiter.limiter.get_window_stats(current[0], *current[1])
    except Exception:  # storage unreachable while answering: a conservative guess
        log.warning("could not read the rate-limit window; answering Retry-After: 1", exc_info=True)
        return 1
    return max(1, math.ceil(reset_at - time.time()))


def install_rate_limit(app: FastAPI, limiter: Limiter) -> None:
    """Attach the limiter and answer its 429 in the fleet's error shape, with ``Retry-After``."""
    app.state.limiter = limiter

    async def rate_limited(request: Request, exc: Exception) -> JSONResponse:
        wait = retry_after_s(limiter, request)
        detail = getattr(exc, "detail", "rate limit")
        err = RateLimitedError(f"rate limit {detail} exceeded for this client; retry in {wait} s",
                               retry_after_s=wait)
        return error_response(err, context.get_correlation_id())

    app.add_exception_handler(RateLimitExceeded, rate_limited)


def check_rate_limit(value: str) -> str:
    """A RATE_LIMIT setting's value, checked: slowapi/limits notation (``10/minute``, ``100/hour;10/minute``)."""
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError as exc:
        raise ValueError(f"RATE_LIMIT {value!r} is not a rate limit like '10/minute' (slowapi notation): {exc}") \
            from None
    return value
