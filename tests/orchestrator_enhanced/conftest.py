"""Circuit breakers are per process and per target name (services.common.http.breaker_for): a test that makes a
target fail must not leave its breaker open for the next test."""

from __future__ import annotations

import pytest

from services.common import http


@pytest.fixture(autouse=True)
def fresh_breakers(monkeypatch):
    monkeypatch.setattr(http, "_breakers", {})
