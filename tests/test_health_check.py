"""scripts/health_check.py against real sockets: a service that is starting answers 503 and may be too busy
to finish its body before the probe's timeout; the probe must say "not ready", not crash the runner."""

from __future__ import annotations

import importlib.util
import socket
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("health_check", ROOT / "scripts" / "health_check.py")
health_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(health_check)


@pytest.fixture
def raw_server():
    """A one-shot HTTP server on a free port that sends ``response`` bytes, then holds the connection open
    (so a body shorter than its Content-Length stalls the reader) until the test ends."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    done = threading.Event()
    state = {}

    def serve():
        conns = []
        srv.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            conn.recv(65536)
            conn.sendall(state["response"])
            conns.append(conn)
        for c in conns:
            c.close()

    def start(response: bytes) -> str:
        state["response"] = response
        state["thread"] = threading.Thread(target=serve, daemon=True)
        state["thread"].start()
        return f"http://127.0.0.1:{srv.getsockname()[1]}"

    yield start
    done.set()
    if "thread" in state:
        state["thread"].join(timeout=5)  # it stops accepting before the socket closes under it
    srv.close()


def test_a_503_whose_body_stalls_is_not_ready_not_a_crash(raw_server):
    url = raw_server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 500\r\n\r\n{\"reasons\": [\"llm")
    ok, detail = health_check.check(url, timeout=0.5)
    assert (ok, detail) == (False, "HTTP 503")


def test_a_503_lists_the_reasons_it_gives(raw_server):
    body = b'{"status": "not ready", "reasons": ["model loading", "guardrails unreachable"]}'
    url = raw_server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert health_check.check(url, timeout=2) == (False, "HTTP 503: model loading; guardrails unreachable")


def test_ready_and_unreachable(raw_server):
    url = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    assert health_check.check(url + "/", timeout=2) == (True, "HTTP 200")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    ok, detail = health_check.check(closed, timeout=1)
    assert not ok and detail.startswith("unreachable")
