"""tts-bark settings: defaults, docstrings, the .env.service file, and bad values that stop the service at startup."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.settings import BaseServiceSettings
from services.common.testing import read_env_file
from services.tts_bark.settings import Settings

ENV_FILE = Path(__file__).resolve().parents[2] / "services" / "tts_bark" / ".env.service"


def own_fields() -> set[str]:
    return set(Settings.model_fields) - set(BaseServiceSettings.model_fields)


def test_defaults_follow_the_plan():
    s = Settings(_env_file=None)
    assert Settings.service_name == "tts-bark" and s.port == 7120
    assert s.bark_use_small_models is False and s.bark_voice_preset == "v2/en_speaker_1"
    assert s.piper_fallback_url == "http://127.0.0.1:7000"
    assert s.tts_bark_sample_rate_hz == 24_000
    assert s.bark_model is None and s.bark_model_id() == "suno/bark"
    assert Settings(_env_file=None, bark_use_small_models=True).bark_model_id() == "suno/bark-small"
    assert Settings(_env_file=None, bark_model="/models/bark", bark_use_small_models=True).bark_model_id() == "/models/bark"
    for name in own_fields():
        assert Settings.model_fields[name].description, f"{name} has no docstring"


def test_env_service_holds_exactly_the_service_fields_at_their_defaults():
    pairs = read_env_file(ENV_FILE)
    assert set(pairs) == {name.upper() for name in own_fields()}
    # Loading the file changes nothing ("BARK_MODEL=" is None, not "").
    assert Settings(_env_file=ENV_FILE).model_dump() == Settings(_env_file=None).model_dump()


def test_every_env_service_key_has_a_comment_above_it():
    lines = ENV_FILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"{line} has no comment line above it"


def test_trailing_slash_of_the_piper_url_is_dropped():
    assert Settings(_env_file=None, piper_fallback_url="http://tts:7000/").piper_fallback_url == "http://tts:7000"


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"bark_voice_preset": "v2/en_speaker_10"}, "v2/en_speaker_0 .. v2/en_speaker_9"),
        ({"bark_voice_preset": "alloy"}, "v2/en_speaker_0 .. v2/en_speaker_9"),
        ({"piper_fallback_url": "tts:7000"}, "PIPER_FALLBACK_URL must be an http"),
        ({"bark_sentence_timeout_s": 0}, "greater than 0"),
        ({"piper_timeout_s": -1}, "greater than 0"),
        ({"tts_bark_sample_rate_hz": 1000}, "greater than or equal to 8000"),
        ({"bark_max_sentence_chars": 5}, "greater than or equal to 20"),
        ({"bark_device": "tpu"}, "'auto', 'cpu' or 'cuda'"),
    ],
)
def test_bad_settings_fail_at_startup(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Settings(_env_file=None, **kwargs)
