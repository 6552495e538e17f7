"""Settings of the guardrails service. The only code of the service that reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.common.ratelimit import check_rate_limit
from services.common.settings import BaseServiceSettings, data_path, service_env_files

INPUT_SCANNERS = ("normalize", "patterns", "classifier", "toxicity")
"""Scanner names POST /validate/input can run (services/guardrails/scanners.py builds them by name)."""
OUTPUT_SCANNERS = ("toxicity", "pii")
"""Scanner names POST /validate/output can run."""


def _names(value: object, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.replace(";", ",").split(",")]
    names = tuple(str(v).strip().lower() for v in value if str(v).strip())  # type: ignore[union-attr]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"unknown scanner(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
    if len(set(names)) != len(names):
        raise ValueError("a scanner is listed twice")
    return names


class Settings(BaseServiceSettings):
    """Environment of the guardrails service: the fleet-wide settings plus the guardrails ones (the plan's
    names kept: ``MAX_INPUT_LENGTH``, ``PROMPT_INJECTION_MODEL``, ``TOXICITY_*``, ``RATE_LIMIT_*``)."""

    model_config = SettingsConfigDict(env_file=service_env_files(__file__))

    service_name: ClassVar[str] = "guardrails"

    port: int = Field(9310, ge=1, le=65535)
    """Port to listen on; 9310 is the compose host port of ``guardrails`` (9300 inside the container)."""

    max_queue: int = Field(64, ge=0, le=10_000)
    """Checks that may wait for a worker thread; one more is refused with 503 ``busy`` and ``Retry-After``."""

    max_input_length: int = Field(1000, ge=1, le=1_000_000)
    """Longest text POST /validate/input accepts as safe, in characters; a longer one gets the verdict
    ``safe: false, reason: "too_long"`` (HTTP 200) without being scanned."""

    guardrails_input_scanners: Annotated[tuple[str, ...], NoDecode] = INPUT_SCANNERS
    """Scanners of POST /validate/input, in order, comma-separated: ``normalize`` (Unicode/invisible-character
    clean-up; later scanners see its output), ``patterns`` (injection/jailbreak phrasing rules),
    ``classifier`` (PROMPT_INJECTION_MODEL; skipped while that is empty), ``toxicity``. Leave one out to turn it off."""

    guardrails_output_scanners: Annotated[tuple[str, ...], NoDecode] = OUTPUT_SCANNERS
    """Scanners of POST /validate/output, in order, comma-separated: ``toxicity``, ``pii`` (redaction)."""

    guardrails_pattern_threshold: float = Field(0.5, gt=0.0, le=1.0)
    """Risk at or above which the pattern scanner blocks (risk combines the weights of the matched rules)."""

    prompt_injection_model: str | None = None
    """Optional prompt-injection classifier: any Hugging Face sequence-classification model (hub id or local
    directory). Its label named like INJECTION/JAILBREAK/UNSAFE/LABEL_1 is the risk. Empty: no classifier
    (the offline default; the pattern scanner still runs)."""

    prompt_injection_threshold: float = Field(0.9, gt=0.0, le=1.0)
    """Classifier probability at or above which an input is blocked as an injection."""

    toxicity_model: str | None = "unitary/toxic-bert"
    """Toxicity model: a Hugging Face sequence classifier (hub id or local directory). When it cannot be
    loaded (offline, not cached) the service falls back to alt-profanity-check, and /health/ready says so.
    Empty: alt-profanity-check only."""

    toxicity_threshold: float = Field(0.7, gt=0.0, le=1.0)
    """Toxicity score at or above which a text is unsafe (same scale for both models)."""

    guardrails_allow_download: bool = True
    """Download a hub model (TOXICITY_MODEL, PROMPT_INJECTION_MODEL) missing from the Hugging Face cache at start;
    false = files on disk only. Offline, a missing model fails fast and the fallback (or nothing) is used."""

    guardrails_pii_min_score: float = Field(0.0, ge=0.0, le=1.0)
    """Lowest recognizer score that is redacted. 0 redacts every validated match; 0.5 keeps what only weak
    patterns match: phone numbers (score 0.4) and undelimited SSN-like numbers (0.05). Checksummed types
    (card, IBAN) and e-mail addresses score 1."""

    rate_limit: str = Field("10/minute", min_length=1)
    """Requests one client may make to POST /validate/input, in slowapi/limits notation (``10/minute``,
    ``100/hour;10/minute``). The client is the caller's own bearer token, else X-Client-Id, else X-Session-Id,
    else the body's session_id, else the IP address."""

    rate_limit_storage_url: SecretStr | None = None
    """Where rate-limit counts live: empty = this process's memory; ``redis://host:6379/0`` = Redis, so
    replicas share counts. When Redis is unreachable the limiter counts in memory until it is back."""

    guardrails_db_path: Path | None = None
    """SQLite file that keeps escalations (POST /escalate). Empty: ``$XDG_DATA_HOME/audio-orchestrator/
    guardrails.sqlite3`` (``~/.local/share/...``); the Dockerfile sets ``/data/guardrails.sqlite3`` on a volume."""

    guardrails_fail_mode: Literal["closed", "open"] = "closed"
    """What happens when a check cannot run (a model errors): ``closed`` answers unsafe with reason
    ``guardrail_error``; ``open`` skips that check. Consumers of this service should apply the same rule
    when guardrails is unreachable (the orchestrator reads its own setting)."""

    @field_validator("guardrails_input_scanners", mode="before")
    @classmethod
    def _input_scanners(cls, value: object) -> tuple[str, ...]:
        return _names(value, INPUT_SCANNERS)

    @field_validator("guardrails_output_scanners", mode="before")
    @classmethod
    def _output_scanners(cls, value: object) -> tuple[str, ...]:
        return _names(value, OUTPUT_SCANNERS)

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        return check_rate_limit(value)

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _storage_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip():
            scheme = value.get_secret_value().split("://", 1)[0]
            if "://" not in value.get_secret_value() or not scheme.startswith(("redis", "rediss", "memory")):
                raise ValueError("RATE_LIMIT_STORAGE_URL must be redis://host:port/db (or rediss://, "
                                 "redis+sentinel://, redis+cluster://, memory://)")
        return value

    def db_path(self) -> Path:
        """GUARDRAILS_DB_PATH, or the default under the XDG data directory."""
        if self.guardrails_db_path is not None:
            return self.guardrails_db_path.expanduser()
        return data_path("guardrails.sqlite3")

    def storage_uri(self) -> str:
        url = self.rate_limit_storage_url.get_secret_value().strip() if self.rate_limit_storage_url else ""
        return url or "memory://"
