"""The tts-bark guide agrees with the code: every setting, route, fallback reason and metric it names."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY

from services.common.settings import BaseServiceSettings
from services.tts_bark.app import create_app
from services.tts_bark.engine import BARK_VOICE_LABELS, FALLBACK_REASONS
from services.tts_bark.settings import Settings
from services.tts_bark.testing import FakeSentenceTts

GUIDE = (Path(__file__).resolve().parents[2] / "docs" / "guides" / "bark-tts-guide.md").read_text()


def test_guide_names_every_setting_of_the_service():
    for name in set(Settings.model_fields) - set(BaseServiceSettings.model_fields):
        assert f"`{name.upper()}`" in GUIDE, name


def test_guide_names_every_route_and_only_real_ones():
    app = create_app(Settings(_env_file=None), bark=FakeSentenceTts())
    routes = {p for p in app.openapi()["paths"] if not p.startswith("/health")}
    documented = set(re.findall(r"`(?:POST|GET) (/[\w/.-]+)`", GUIDE)) | set(re.findall(r"`(/voices)`", GUIDE))
    assert routes == documented


def test_guide_lists_every_fallback_reason_and_voice_label():
    for reason in FALLBACK_REASONS:
        assert f"`{reason}`" in GUIDE, reason
    for name, label in BARK_VOICE_LABELS.items():
        assert f"| `{name}` | {label}" in GUIDE, name


def test_metrics_named_in_the_guide_exist():
    names = set(re.findall(r"`([a-z_]+_(?:total|seconds|factor))(?:\{[^`]*\})?`", GUIDE))
    assert "engine_fallbacks_total" in names
    known = {m.name for m in REGISTRY.collect()} | {m.name + "_total" for m in REGISTRY.collect()}
    assert names <= known, names - known
