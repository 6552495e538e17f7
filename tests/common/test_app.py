"""The app factory: health, readiness, error shape, correlation ids, deadlines, auth, metrics, overload."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import threading

import httpx
import numpy as np
import pytest
from fastapi import APIRouter, UploadFile, WebSocket
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import BaseModel, Field

from services.common import context, metrics
from services.common.app import Dependency, create_service_app
from services.common.audio import AudioSegment, decode_audio, encode_wav
from services.common.errors import EngineNotReadyError
from services.common.inference import InferenceRunner
from services.common.logging import configure_logging
from services.common.testing import free_port
from services.common.settings import BaseServiceSettings
from services.common.testing import serve_in_thread


class DemoSettings(BaseServiceSettings):
    service_name = "demo"


class Component:
    """A component with a controllable load: start() waits for `loaded` or raises `fail`."""

    def __init__(self, name="demo-engine", fail: Exception | None = None):
        self.name = name
        self.fail = fail
        self.loaded = threading.Event()
        self._ready = False
        self.closed = False

    async def start(self):
        if self.fail:
            raise self.fail
        while not self.loaded.is_set():
            await asyncio.sleep(0.01)
        self._ready = True

    def ready(self):
        return self._ready

    async def aclose(self):
        self.closed = True

    def describe(self):
        return {"engine": "demo", "model": "tiny"}


class Item(BaseModel):
    text: str = Field(min_length=1)
    count: int = Field(1, ge=1, le=10)


def demo_router(runner: InferenceRunner | None = None, gate: threading.Event | None = None) -> APIRouter:
    r = APIRouter()

    @r.post("/items/{item_id}")
    async def create(item_id: int, item: Item):
        return {"id": item_id, "text": item.text}

    @r.get("/context")
    async def ctx():
        d = context.get_deadline()
        logging.getLogger("demo").info("inside route")
        return {"correlation_id": context.get_correlation_id(), "remaining_s": d.remaining() if d else None}

    @r.get("/not-ready")
    async def not_ready():
        raise EngineNotReadyError("model still loading")

    @r.get("/boom")
    async def boom():
        raise RuntimeError("secret internal detail")

    @r.post("/decode")
    async def decode(file: UploadFile):
        seg = decode_audio(await file.read(), max_bytes=1_000_000, max_duration_s=5)
        return {"rate": seg.sample_rate, "channels": seg.channels, "seconds": round(seg.duration_s, 3)}

    @r.websocket("/ws")
    async def ws(socket: WebSocket):
        await socket.accept()
        await socket.send_text("hello")
        await socket.close()

    @r.post("/infer")
    async def infer():
        return {"out": await runner.run(gate.wait)}

    return r


def make_app(**kw):
    settings = DemoSettings(_env_file=None, **kw.pop("settings", {}))
    runner = kw.pop("runner", None)
    gate = kw.pop("gate", None)
    return create_service_app(settings, routers=[demo_router(runner, gate)], **kw)


@pytest.fixture
def client():
    transport = httpx.ASGITransport(app=make_app())
    return httpx.AsyncClient(transport=transport, base_url="http://demo")


# --- error shape ------------------------------------------------------------------------------------


def assert_error_shape(body, code, status_class=None):
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code", "retryable", "correlation_id"}
    assert err["code"] == code
    assert err["message"]
    return err


async def test_validation_error_is_4xx_in_the_one_shape(client):
    r = await client.post("/items/1", json={"text": "", "count": 99})
    assert r.status_code == 422
    err = assert_error_shape(r.json(), "invalid_request")
    assert "text" in err["message"] and "count" in err["message"]
    assert err["type"] == "invalid_request_error"
    assert err["correlation_id"] == r.headers["x-correlation-id"]


async def test_unknown_route_and_wrong_method_use_the_shape(client):
    r = await client.get("/nope")
    assert r.status_code == 404
    assert_error_shape(r.json(), "not_found")
    r = await client.get("/items/1")
    assert r.status_code == 405
    assert_error_shape(r.json(), "method_not_allowed")


async def test_service_error_maps_to_status_and_retryable(client):
    r = await client.get("/not-ready")
    assert r.status_code == 503
    err = assert_error_shape(r.json(), "engine_not_ready")
    assert err["retryable"] is True


async def test_unhandled_exception_is_500_without_leaking_details(client):
    r = await client.get("/boom")
    assert r.status_code == 500
    err = assert_error_shape(r.json(), "engine_failed")
    assert "secret internal detail" not in r.text
    assert err["correlation_id"]


@pytest.mark.parametrize(
    "payload, status, words",
    [
        (b"", 422, ["empty", "WAV"]),
        (b"this is plainly not audio" * 20, 422, ["WAV, FLAC"]),
        (encode_wav(AudioSegment(np.zeros((16000 * 6, 1), dtype=np.float32), 16000)), 422, ["limit"]),
        (b"RIFF" + b"\x00" * 2_000_000, 413, ["1000000"]),
    ],
)
async def test_malformed_audio_upload_is_a_4xx_with_a_message(client, payload, status, words):
    r = await client.post("/decode", files={"file": ("x.wav", payload, "audio/wav")})
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert all(w in message for w in words), message


async def test_good_audio_upload_decodes(client):
    stereo = AudioSegment(np.zeros((48000, 2), dtype=np.float32), 48000)
    r = await client.post("/decode", files={"file": ("x.wav", encode_wav(stereo), "audio/wav")})
    assert r.json() == {"rate": 48000, "channels": 2, "seconds": 1.0}


# --- correlation id and deadline -------------------------------------------------------------------------


async def test_correlation_id_round_trips_and_reaches_logs(client):
    stream = io.StringIO()
    configure_logging("demo", stream=stream)
    try:
        r = await client.get("/context", headers={"X-Correlation-ID": "turn-42"})
    finally:
        logging.getLogger().handlers.clear()
    assert r.headers["x-correlation-id"] == "turn-42"
    assert r.json()["correlation_id"] == "turn-42"
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    inside = [rec for rec in records if rec["message"] == "inside route"]
    assert inside and inside[0]["correlation_id"] == "turn-42" and inside[0]["service"] == "demo"
    access = [rec for rec in records if rec.get("route") == "/context"]
    assert access and access[0]["correlation_id"] == "turn-42" and access[0]["status"] == 200


async def test_bad_correlation_id_is_replaced(client):
    r = await client.get("/context", headers={"X-Correlation-ID": "bad id\nwith newline"})
    new = r.headers["x-correlation-id"]
    assert new != "bad id\nwith newline" and len(new) == 32


async def test_deadline_header_sets_the_budget():
    app = make_app(settings={"request_timeout_s": 30})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://demo") as c:
        short = (await c.get("/context", headers={"X-Deadline-Ms": "500"})).json()["remaining_s"]
        default = (await c.get("/context")).json()["remaining_s"]
        # a caller cannot extend the service's own limit
        capped = (await c.get("/context", headers={"X-Deadline-Ms": "999999999"})).json()["remaining_s"]
    assert 0 < short <= 0.5
    assert 29 < default <= 30
    assert capped <= 30


# --- auth -------------------------------------------------------------------------------------------------


async def test_auth_rejects_missing_and_wrong_token_but_leaves_health_open():
    app = make_app(settings={"service_auth_token": "s3cret"})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://demo") as c:
        missing = await c.get("/context")
        wrong = await c.get("/context", headers={"Authorization": "Bearer nope"})
        right = await c.get("/context", headers={"Authorization": "Bearer s3cret"})
        live = await c.get("/health/live")
        scrape = await c.get("/metrics")
    assert missing.status_code == 401 and wrong.status_code == 401
    assert_error_shape(missing.json(), "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200
    assert live.status_code == 200 and scrape.status_code == 200


def test_websocket_auth_closes_with_policy_violation():
    from starlette.websockets import WebSocketDisconnect

    app = make_app(settings={"service_auth_token": "s3cret"})
    with TestClient(app) as tc:
        with pytest.raises(WebSocketDisconnect) as info:
            with tc.websocket_connect("/ws") as ws:
                ws.receive_text()
        assert info.value.code == 1008
        with tc.websocket_connect("/ws", headers={"Authorization": "Bearer s3cret"}) as ws:
            assert ws.receive_text() == "hello"


# --- metrics ------------------------------------------------------------------------------------------------


async def test_metrics_count_requests_by_templated_route_and_status(client):
    labels = {"service": "demo", "route": "/items/{item_id}", "method": "POST", "status": "200"}
    before = REGISTRY.get_sample_value("requests_total", labels) or 0
    await client.post("/items/7", json={"text": "a"})
    await client.post("/items/8", json={"text": "b"})
    assert REGISTRY.get_sample_value("requests_total", labels) == before + 2
    assert REGISTRY.get_sample_value("request_duration_seconds_count", labels) >= 2
    body = (await client.get("/metrics")).text
    assert 'route="/items/{item_id}"' in body
    assert "/items/7" not in body  # raw paths never become labels


# --- readiness with a real server (lifespan runs) ---------------------------------------------------------------


def test_ready_waits_for_the_component_and_reports_it():
    comp = Component()
    app = make_app(components=[comp])
    with serve_in_thread(app) as url:
        assert httpx.get(f"{url}/health/live").status_code == 200
        r = httpx.get(f"{url}/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "not_ready"
        assert "demo-engine: loading" in r.json()["reasons"]
        comp.loaded.set()
        for _ in range(100):
            r = httpx.get(f"{url}/health/ready")
            if r.status_code == 200:
                break
        assert r.status_code == 200
        assert r.json()["components"]["demo-engine"] == {"ready": True, "engine": "demo", "model": "tiny"}
        assert REGISTRY.get_sample_value("service_health_status", {"service": "demo", "component": "overall"}) == 1
    assert comp.closed


def test_failed_load_stays_not_ready_with_the_reason():
    app = make_app(components=[Component(fail=FileNotFoundError("no weights at /models/x"))])
    with serve_in_thread(app) as url:
        for _ in range(50):
            r = httpx.get(f"{url}/health/ready")
            if "error" in r.json()["components"]["demo-engine"]:
                break
        assert r.status_code == 503
        assert "no weights at /models/x" in r.json()["components"]["demo-engine"]["error"]


def test_required_dependency_gates_readiness_and_optional_does_not():
    dead = f"http://127.0.0.1:{free_port()}"
    up = make_app()
    with serve_in_thread(up) as up_url:
        cases = [
            ([Dependency("stt", up_url)], 200),
            ([Dependency("stt", dead)], 503),
            ([Dependency("stt", up_url), Dependency("denoise", dead, required=False)], 200),
        ]
        for deps, expected in cases:
            app = make_app(dependencies=deps, settings={"dependency_poll_s": 0.1})
            with serve_in_thread(app) as url:
                for _ in range(50):
                    body = httpx.get(f"{url}/health/ready").json()
                    if all(v["detail"] != "not probed yet" for v in body["dependencies"].values()):
                        break
                r = httpx.get(f"{url}/health/ready")
                assert r.status_code == expected, r.json()
                if expected == 503:
                    assert any("dependency stt" in reason for reason in r.json()["reasons"])


# --- overload ------------------------------------------------------------------------------------------


def test_overload_answers_503_with_retry_after():
    gate = threading.Event()
    runner = InferenceRunner("demo-infer", max_concurrency=1, max_queue=1)
    app = make_app(runner=runner, gate=gate)
    with serve_in_thread(app) as url:
        with httpx.Client(base_url=url, timeout=10) as c:
            results: list[httpx.Response] = []
            workers = [threading.Thread(target=lambda: results.append(c.post("/infer"))) for _ in range(2)]
            for w in workers:
                w.start()
            for _ in range(100):
                if runner.admitted == 2:
                    break
                threading.Event().wait(0.01)
            refused = c.post("/infer")
            gate.set()
            for w in workers:
                w.join(5)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert_error_shape(refused.json(), "busy")
    assert [r.status_code for r in results] == [200, 200]


def _flaky_http_server(drop_first: int) -> tuple[int, list[int], socket.socket]:
    """A raw HTTP server that closes its first ``drop_first`` connections without answering (a reset seen by
    the client as a read error), then answers 200."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    seen: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                seen.append(1)
                conn.recv(4096)
                if len(seen) > drop_first:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], seen, srv


async def test_a_dependency_probe_retries_one_dropped_connection_but_not_a_refused_one():
    from services.common.app import _Health
    from services.common.http import close_shared_client
    from services.common.settings import BaseServiceSettings

    port, seen, srv = _flaky_http_server(drop_first=1)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    dead_port = refused.getsockname()[1]
    refused.close()
    try:
        health = _Health(BaseServiceSettings(_env_file=None), [], [])
        assert await health.probe(Dependency("flaky", f"http://127.0.0.1:{port}")) == (True, "HTTP 200")
        assert len(seen) == 2  # dropped once, answered on the retry
        ok, detail = await health.probe(Dependency("dead", f"http://127.0.0.1:{dead_port}"))
        assert ok is False and detail == "unreachable: ConnectError"
        port2, seen2, srv2 = _flaky_http_server(drop_first=5)
        ok, detail = await health.probe(Dependency("down", f"http://127.0.0.1:{port2}"))
        assert ok is False and detail.startswith("unreachable") and len(seen2) == 2  # one retry only
        srv2.close()
    finally:
        srv.close()
        await close_shared_client()
