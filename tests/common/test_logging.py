"""The fleet's log setup: one JSON line per record with service and correlation id; httpx's per-request INFO
lines (health polls every few seconds) stay out unless LOG_LEVEL=DEBUG."""

from __future__ import annotations

import io
import json
import logging

import pytest

from services.common import context
from services.common.logging import configure_logging


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {n: logging.getLogger(n).level for n in ("httpx", "httpcore")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)


def test_records_carry_service_and_correlation_id_and_httpx_info_is_quiet():
    out = io.StringIO()
    configure_logging("svc-x", level="INFO", json_logs=True, stream=out)
    token = context.set_correlation_id("cid-42")
    try:
        logging.getLogger("services.demo").info("hello")
        logging.getLogger("httpx").info("HTTP Request: GET /health/live")
        logging.getLogger("httpx").warning("something worth seeing")
    finally:
        context.reset_correlation_id(token)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["message"] for r in lines] == ["hello", "something worth seeing"]
    assert lines[0]["service"] == "svc-x" and lines[0]["correlation_id"] == "cid-42"


def test_debug_shows_httpx_requests_again():
    out = io.StringIO()
    configure_logging("svc-x", level="DEBUG", json_logs=False, stream=out)
    logging.getLogger("httpx").info("HTTP Request: GET /health/live")
    assert "HTTP Request" in out.getvalue()
