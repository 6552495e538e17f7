"""llm settings: defaults, docstrings, the .env.service file, and bad values that stop the service at startup."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.settings import BaseServiceSettings
from services.common.testing import read_env_file
from services.llm.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def llm_fields() -> set[str]:
    return set(Settings.model_fields) - set(BaseServiceSettings.model_fields)


def test_settings_defaults_are_valid():
    s = Settings(_env_file=None)
    assert Settings.service_name == "llm" and s.port == 8000
    assert s.llm_model_path is None
    assert (s.llm_n_ctx, s.llm_n_threads, s.llm_max_tokens) == (2048, 0, 512)
    assert (s.llm_temperature, s.llm_top_p) == (0.2, 0.9)
    assert s.max_concurrency == 1
    for name in llm_fields():
        assert Settings.model_fields[name].description, f"{name} has no docstring"


def test_env_service_holds_exactly_the_llm_fields_at_their_defaults():
    env_file = REPO / "services" / "llm" / ".env.service"
    pairs = read_env_file(env_file)
    assert set(pairs) == {name.upper() for name in llm_fields()}
    # Loading the file changes nothing but the one deliberate deployment choice: every other value is the
    # default ("LLM_MODEL_PATH=" is None, not "."). The fleet turns the prompt cache on (the orchestrator's long
    # system prompt and tool list are shared by every turn); the class default keeps temperature 0 exact.
    loaded = Settings(_env_file=env_file).model_dump()
    assert loaded.pop("llm_prompt_cache") is True and Settings(_env_file=None).llm_prompt_cache is False
    defaults = Settings(_env_file=None).model_dump()
    defaults.pop("llm_prompt_cache")
    assert loaded == defaults


def test_every_env_service_key_has_a_comment_above_it():
    lines = (REPO / "services" / "llm" / ".env.service").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"{line} has no comment line above it"


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"max_concurrency": 2}, "MAX_CONCURRENCY must be 1"),
        ({"llm_max_tokens": 2048}, "must be below LLM_N_CTX"),
        ({"llm_n_ctx": 100}, "greater than or equal to 256"),
        ({"llm_n_threads": -1}, "greater than or equal to 0"),
        ({"llm_max_tokens": 0}, "greater than or equal to 1"),
        ({"llm_temperature": 2.5}, "less than or equal to 2"),
        ({"llm_top_p": 0}, "greater than 0"),
    ],
)
def test_bad_settings_fail_at_startup(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Settings(_env_file=None, **kwargs)
