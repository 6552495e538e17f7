"""Shared fixtures of the tts-bark tests: a tiny random-weight Bark checkpoint on disk, the real tts (Piper)
service on a free port, and helpers to build and serve tts-bark apps against them."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from services.common.testing import serve_in_thread
from services.tts.app import create_app as create_tts_app
from services.tts.settings import Settings as TtsSettings
from services.tts_bark.settings import Settings
from services.tts_bark.testing import build_random_bark, expected_samples

SEMANTIC_TOKENS = 20
SENTENCE_SAMPLES = expected_samples(SEMANTIC_TOKENS)  # 9600 at 24 kHz: 0.4 s per sentence from the tiny Bark
GAP_SAMPLES = 6000  # SENTENCE_GAP_S (0.25 s) at 24 kHz


def wait_for(predicate, timeout_s: float = 30.0) -> None:
    """Poll ``predicate`` until it is true (a readiness wait, not a timing assertion)."""
    stop = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        stop.wait(0.05)
    raise AssertionError("condition not reached")


@pytest.fixture(scope="session")
def bark_dir(tmp_path_factory) -> Path:
    return build_random_bark(tmp_path_factory.mktemp("bark-tiny"), size="tiny", semantic_tokens=SEMANTIC_TOKENS)


@contextmanager
def serve_tts(**settings) -> Iterator[str]:
    """The real tts service (bundled Piper voice), ready."""
    with serve_in_thread(create_tts_app(TtsSettings(_env_file=None, **settings))) as base:
        wait_for(lambda: httpx.get(f"{base}/health/ready").status_code == 200)
        yield base


@pytest.fixture(scope="session")
def piper_url() -> Iterator[str]:
    with serve_tts() as base:
        yield base


def closed_port_url() -> str:
    """A URL nothing listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def bark_settings(bark_dir: Path | str, piper_url: str, **kw) -> Settings:
    """tts-bark settings for tests: the tiny checkpoint, one torch thread (robust on a busy shared CPU),
    fast dependency polling."""
    kw.setdefault("bark_cpu_threads", 1)
    kw.setdefault("dependency_poll_s", 0.2)
    return Settings(_env_file=None, bark_model=str(bark_dir), piper_fallback_url=piper_url, **kw)


@contextmanager
def serve_bark(app, *, bark_ready: bool | None = True) -> Iterator[str]:
    """Serve a tts-bark app; wait until /health/ready answers and, when ``bark_ready`` is set, until Bark
    has loaded (True) or failed to load (False)."""
    with serve_in_thread(app) as base:
        def settled() -> bool:
            r = httpx.get(f"{base}/health/ready")
            bark = r.json()["components"]["tts-bark"]["bark"]
            if bark_ready is None:
                return r.status_code == 200
            return bark["ready"] if bark_ready else "error" in bark
        wait_for(settled)
        yield base
