"""Helpers every service's settings share: the default data directory and URLs made safe to show."""

from __future__ import annotations

import pytest

from services.common.settings import data_path, redact_url


@pytest.mark.parametrize("url, shown", [
    ("memory://", "memory://"),
    ("redis://cache:6379/0", "redis://cache:6379/0"),
    ("redis://:hunter2@cache:6379/0", "redis://***@cache:6379/0"),
    ("redis://user:hunter2@cache:6379/0?db=1", "redis://***@cache:6379/0?db=1"),
    ("redis://cache:6379/0?password=hunter2&db=1", "redis://cache:6379/0?password=***&db=1"),
])
def test_redact_url_hides_credentials_and_nothing_else(url, shown):
    assert redact_url(url) == shown


def test_data_path_follows_xdg_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert data_path("x.sqlite3") == tmp_path / "audio-orchestrator" / "x.sqlite3"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert data_path("x.sqlite3").parts[-3:] == ("share", "audio-orchestrator", "x.sqlite3")
