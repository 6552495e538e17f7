"""guardrails settings: the .env.service file is exactly the service's own fields at their defaults, and bad
configuration fails at startup."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.settings import BaseServiceSettings
from services.common.testing import read_env_file
from services.guardrails.settings import INPUT_SCANNERS, OUTPUT_SCANNERS, Settings

ENV_SERVICE = Path(__file__).resolve().parents[2] / "services" / "guardrails" / ".env.service"
OWN = {name for name in Settings.model_fields if name not in BaseServiceSettings.model_fields}


def test_env_service_lists_exactly_the_own_fields_with_a_comment_each():
    pairs = read_env_file(ENV_SERVICE)
    assert set(pairs) == {name.upper() for name in OWN}
    lines = ENV_SERVICE.read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"{line} has no comment line above it"


def test_env_service_values_are_the_defaults():
    from_file = Settings(_env_file=ENV_SERVICE)
    defaults = Settings(_env_file=None)
    for name in OWN:
        assert getattr(from_file, name) == getattr(defaults, name), name


def test_defaults_are_the_plans():
    s = Settings(_env_file=None)
    assert s.port == 9310 and Settings.service_name == "guardrails"
    assert s.max_input_length == 1000
    assert s.prompt_injection_model is None  # no classifier offline
    assert s.toxicity_model == "unitary/toxic-bert" and s.toxicity_threshold == 0.7
    assert s.rate_limit == "10/minute" and s.storage_uri() == "memory://"
    assert s.guardrails_fail_mode == "closed"
    assert s.guardrails_input_scanners == INPUT_SCANNERS and s.guardrails_output_scanners == OUTPUT_SCANNERS
    assert s.db_path().name == "guardrails.sqlite3"


def test_scanner_lists_parse_from_comma_strings():
    s = Settings(_env_file=None, guardrails_input_scanners="normalize, patterns", guardrails_output_scanners="pii")
    assert s.guardrails_input_scanners == ("normalize", "patterns")
    assert s.guardrails_output_scanners == ("pii",)


@pytest.mark.parametrize("field, value, message", [
    ("guardrails_input_scanners", "normalize,regex", r"unknown scanner\(s\) regex"),
    ("guardrails_output_scanners", "pii,pii", "listed twice"),
    ("rate_limit", "ten per minute", "is not a rate limit"),
    ("rate_limit_storage_url", "localhost:6379", "RATE_LIMIT_STORAGE_URL must be redis://"),
    ("guardrails_fail_mode", "maybe", "closed"),
    ("toxicity_threshold", 1.5, "less than or equal to 1"),
])
def test_bad_values_fail_at_startup(field, value, message):
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, **{field: value})


def test_redis_storage_url_is_kept_secret():
    s = Settings(_env_file=None, rate_limit_storage_url="redis://:hunter2@cache:6379/0")
    assert s.storage_uri() == "redis://:hunter2@cache:6379/0"
    assert "hunter2" not in repr(s)
