"""App factory: every service is ``create_service_app(settings, components=..., routers=...)``.

It adds, the same way everywhere:

- ``/health/live`` (constant time) and ``/health/ready`` (200 only when every component - engine,
  model - is loaded and every *required* dependency answers; the body says which engine/model and why
  not). Neither does inference: components expose a ``ready()`` flag and dependencies are polled in
  the background.
- ``/metrics`` (Prometheus text) with request count/latency per templated route and status.
- one JSON error shape (`services.common.errors`) for every 4xx/5xx, validation errors and 404s included.
- correlation ids (``X-Correlation-ID`` in, out, and in logs) and the request deadline (``X-Deadline-Ms``).
- optional bearer-token auth between services (``SERVICE_AUTH_TOKEN``); health and metrics stay open.

Components start in the background at startup, so the service is *live* at once and *ready* when its
model has loaded; a failed load keeps it not-ready with the reason in ``/health/ready``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import context, metrics
from services.common.errors import EngineFailedError, InvalidRequestError, ServiceError, UnauthorizedError
from services.common.http import close_shared_client, shared_async_client
from services.common.settings import BaseServiceSettings

log = logging.getLogger("services.app")

OPEN_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})


@runtime_checkable
class Component(Protocol):
    """What the factory needs of an engine: a name, a start that loads weights, a ready flag."""

    name: str

    async def start(self) -> None: ...

    def ready(self) -> bool: ...

    async def aclose(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        """Engine/model facts for /health/ready (e.g. {"engine": "piper", "model": "en_US-joe-medium"})."""
        ...


@dataclass(frozen=True)
class Dependency:
    """Another service this one calls. Required ones gate readiness; optional ones are only reported."""

    name: str
    url: str
    required: bool = True
    path: str = "/health/live"


def error_response(err: ServiceError, correlation_id: str | None = None) -> JSONResponse:
    return JSONResponse(err.body(correlation_id), status_code=err.http_status, headers=err.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, first_param = [], None
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        first_param = first_param or loc
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts), first_param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_req: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc, context.get_correlation_id())

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(InvalidRequestError(message, param=param), context.get_correlation_id())

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = ServiceError(str(exc.detail))
        body = err.body(context.get_correlation_id())
        body["error"].update(code=_HTTP_CODES.get(exc.status_code, "http_error"), retryable=False,
                             type="invalid_request_error" if exc.status_code < 500 else "server_error")
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


class RequestContextMiddleware:
    """Correlation id, deadline, auth, request metrics and the last-resort 500, as pure ASGI
    (streaming responses pass through untouched)."""

    def __init__(self, app: ASGIApp, settings: BaseServiceSettings, fleet_auth: bool = True) -> None:
        self.app = app
        self.settings = settings
        self.token = settings.secret_token() if fleet_auth else None

    def _authorized(self, headers: Headers) -> bool:
        if not self.token:
            return True
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        cid = context.accept_correlation_id(headers.get(context.CORRELATION_HEADER))
        deadline = None
        if scope["type"] == "http":  # a websocket is a session, not a request: no request deadline
            deadline = context.Deadline.from_header(headers.get(context.DEADLINE_HEADER))
            deadline = (deadline or context.Deadline.after(self.settings.request_timeout_s)).sooner(
                self.settings.request_timeout_s
            )
        cid_token = context.set_correlation_id(cid)
        dl_token = context.set_deadline(deadline)
        path = scope.get("path", "")
        try:
            if scope["type"] == "websocket":
                if path not in OPEN_PATHS and not self._authorized(headers):
                    # closing before accept: the handshake is refused (uvicorn answers HTTP 403)
                    await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
                    return
                await self.app(scope, receive, send)
                return
            await self._http(scope, receive, send, headers, cid, path)
        finally:
            context.reset_deadline(dl_token)
            context.reset_correlation_id(cid_token)

    async def _http(self, scope: Scope, receive: Receive, send: Send, headers: Headers, cid: str, path: str) -> None:
        status = 500
        started = False
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-correlation-id", cid.encode())]
            await send(message)

        try:
            if path not in OPEN_PATHS and not self._authorized(headers):
                err = UnauthorizedError("missing or wrong bearer token (Authorization: Bearer <SERVICE_AUTH_TOKEN>)",
                                        headers={"WWW-Authenticate": "Bearer"})
                await error_response(err, cid)(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            if not started:
                err = EngineFailedError("internal error; the correlation id identifies it in the service's logs")
                await error_response(err, cid)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            method = scope.get("method", "")
            labels = (metrics.service(), route, method, str(status))
            metrics.REQUESTS.labels(*labels).inc()
            metrics.REQUEST_DURATION.labels(*labels).observe(elapsed)
            level = logging.DEBUG if path in OPEN_PATHS else logging.INFO
            log.log(level, "%s %s -> %s in %.1f ms", method, path, status, elapsed * 1000,
                    extra={"route": route, "status": status, "duration_ms": round(elapsed * 1000, 1)})


class _Health:
    """Readiness state: component flags plus a background poll of dependencies."""

    def __init__(self, settings: BaseServiceSettings, components: Sequence[Component], dependencies: Sequence[Dependency]):
        self.settings = settings
        self.components = list(components)
        self.dependencies = list(dependencies)
        self.start_errors: dict[str, str] = {}
        self.dep_status: dict[str, tuple[bool, str]] = {d.name: (False, "not probed yet") for d in dependencies}
        self.tasks: list[asyncio.Task[Any]] = []

    async def start_component(self, comp: Component) -> None:
        try:
            await comp.start()
            log.info("component %s ready", comp.name, extra={"engine": comp.name})
        except Exception as exc:  # keep serving /health with the reason
            self.start_errors[comp.name] = f"{type(exc).__name__}: {exc}"
            log.exception("component %s failed to start", comp.name, extra={"engine": comp.name})

    async def probe(self, dep: Dependency) -> tuple[bool, str]:
        """One look at a dependency; a transport error is retried once after a moment, so a single reset
        connection on a busy machine does not flip this service to not-ready for a whole poll period."""
        timeout = min(2.0, self.settings.dependency_poll_s)
        for attempt in range(2):
            try:
                r = await shared_async_client().get(dep.url.rstrip("/") + dep.path, timeout=timeout)
            except httpx.HTTPError as exc:
                if attempt == 0 and not isinstance(exc, httpx.ConnectError):
                    await asyncio.sleep(0.2)
                    continue
                return False, f"unreachable: {type(exc).__name__}"
            return (r.status_code < 400), f"HTTP {r.status_code}"
        raise AssertionError("unreachable")

    async def poll_dependencies(self) -> None:
        while True:
            results = await asyncio.gather(*(self.probe(d) for d in self.dependencies))
            self.dep_status = {d.name: res for d, res in zip(self.dependencies, results)}
            await asyncio.sleep(self.settings.dependency_poll_s)

    def report(self) -> tuple[bool, dict[str, Any]]:
        service = self.settings.service_name
        comps: dict[str, Any] = {}
        reasons: list[str] = []
        for c in self.components:
            ok = bool(c.ready())
            info: dict[str, Any] = {"ready": ok, **(c.describe() or {})}
            if c.name in self.start_errors:
                info["error"] = self.start_errors[c.name]
            if not ok:
                reasons.append(f"{c.name}: " + (f"failed to start: {info['error']}" if "error" in info else "loading"))
            metrics.HEALTH.labels(service, c.name).set(int(ok))
            comps[c.name] = info
        deps: dict[str, Any] = {}
        for d in self.dependencies:
            ok, detail = self.dep_status[d.name]
            deps[d.name] = {"url": d.url, "required": d.required, "ok": ok, "detail": detail}
            if d.required and not ok:
                reasons.append(f"dependency {d.name} ({d.url}): {detail}")
            metrics.HEALTH.labels(service, d.name).set(int(ok))
        ready = not reasons
        metrics.HEALTH.labels(service, "overall").set(int(ready))
        body = {"status": "ready" if ready else "not_ready", "service": service, "components": comps,
                "dependencies": deps}
        if reasons:
            body["reasons"] = reasons
        return ready, body


def create_service_app(
    settings: BaseServiceSettings,
    *,
    components: Sequence[Component] = (),
    dependencies: Sequence[Dependency] = (),
    routers: Sequence[APIRouter] = (),
    title: str | None = None,
    version: str = "0.1.0",
    fleet_auth: bool = True,
) -> FastAPI:
    """The service's FastAPI app. ``fleet_auth=False`` is for a page people open in a browser (testing-ui),
    which cannot send the fleet's bearer token and has its own login; the token is still sent on its calls."""
    metrics.set_service(settings.service_name)
    health = _Health(settings, components, dependencies)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        health.tasks = [asyncio.create_task(health.start_component(c)) for c in components]
        if dependencies:
            health.tasks.append(asyncio.create_task(health.poll_dependencies()))
        try:
            yield
        finally:
            for t in health.tasks:
                t.cancel()
            await asyncio.gather(*health.tasks, return_exceptions=True)
            for c in components:
                try:
                    await c.aclose()
                except Exception:
                    log.exception("closing %s failed", c.name)
            await close_shared_client()

    app = FastAPI(title=title or settings.service_name, version=version, lifespan=lifespan)
    app.state.settings = settings
    app.state.health = health
    _install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, settings=settings, fleet_auth=fleet_auth)

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        return {"status": "alive", "service": settings.service_name}

    @app.get("/health/ready", tags=["health"])
    async def ready() -> JSONResponse:
        ok, body = health.report()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics_route() -> Response:
        health.report()  # refresh the health gauges at scrape time
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    for r in routers:
        app.include_router(r)
    return app


def run_service(app: FastAPI, settings: BaseServiceSettings) -> None:
    """Entry point body of every ``python -m services.<name>``: logging, then uvicorn."""
    import uvicorn

    from services.common.logging import configure_logging

    configure_logging(settings.service_name, level=settings.log_level, json_logs=settings.log_json)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, timeout_graceful_shutdown=5)
