"""Settings base shared by every service (pydantic-settings).

Each service subclasses `BaseServiceSettings` in its own ``settings.py``; that class is the only code that
reads the environment. Sources, highest priority first: init kwargs, environment variables, the service's
``.env.service``, the repository's ``.env.common``. In Docker, compose's ``env_file`` lists
(``.env.common``, ``.env.docker``, ``.env.service``) arrive as environment variables.

Defaults are the *local* fleet (`make run`): every service on 127.0.0.1 at its compose host port, so the
compose port table is the one truth for ports; ``.env.docker`` swaps in compose DNS names and container ports.
Tests build ``Settings(_env_file=None, ...)`` and never touch ``os.environ``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMON_ENV_FILE = REPO_ROOT / ".env.common"


def data_path(filename: str) -> Path:
    """Default place of a service's data file: ``$XDG_DATA_HOME/audio-orchestrator/<filename>``
    (``~/.local/share/...`` when XDG_DATA_HOME is unset)."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "audio-orchestrator" / filename


def redact_url(url: str) -> str:
    """``url`` without credentials (user info becomes ``***``, as does a ``password`` query parameter): safe
    for logs, errors and /health/ready."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if "@" not in parts.netloc and not any(k.lower() == "password" for k, _ in pairs):
        return url  # nothing to hide: unchanged (urlunsplit would turn "memory://" into "memory:")
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*") \
        if pairs else parts.query
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def service_env_files(settings_module_file: str) -> tuple[Path, Path]:
    """``(.env.common, <service dir>/.env.service)`` for a service's ``settings.py``."""
    return (COMMON_ENV_FILE, Path(settings_module_file).resolve().parent / ".env.service")


class BaseServiceSettings(BaseSettings):
    """Fleet-wide settings; every service inherits them."""

    model_config = SettingsConfigDict(
        env_file=(COMMON_ENV_FILE,),
        env_file_encoding="utf-8",
        extra="ignore",
        use_attribute_docstrings=True,
        validate_default=True,
        # `KEY=` (empty) in an env file or the environment means "not set": None for optional fields
        # (a directory, a token), a clear validation error for required ones. Never the empty string,
        # which a Path would read as the current directory.
        env_parse_none_str="",
    )

    service_name: ClassVar[str] = "service"
    """Name used in logs, metrics and compose (hyphenated, e.g. ``llm-flan``)."""

    host: str = "127.0.0.1"
    """Interface to listen on. Loopback for local runs; ``0.0.0.0`` in containers (set by the Dockerfile)."""

    port: int = Field(8000, ge=1, le=65535)
    """Port to listen on. Defaults to the service's compose *host* port; the Dockerfile sets the container port."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Minimum level of log records."""

    log_json: bool = True
    """Structured JSON logs (one object per line) when true; human-readable lines when false."""

    service_auth_token: SecretStr | None = None
    """Shared bearer token between services. When set, every route but /health/* and /metrics requires
    ``Authorization: Bearer <token>`` and the HTTP client sends it. Empty disables auth."""

    request_timeout_s: float = Field(60.0, gt=0, le=3600)
    """Time budget of an incoming request when the caller sends no ``X-Deadline-Ms``."""

    max_concurrency: int = Field(1, ge=1, le=64)
    """Blocking inference calls running at once (threads)."""

    max_queue: int = Field(8, ge=0, le=10_000)
    """Calls allowed to wait for an inference slot; beyond that the service answers 503 with Retry-After."""

    http_timeout_s: float = Field(10.0, gt=0, le=3600)
    """Default per-call timeout of calls to other services (capped by the request's remaining deadline)."""

    http_retries: int = Field(2, ge=0, le=10)
    """Extra attempts for idempotent calls that fail with a retryable error."""

    breaker_failure_threshold: int = Field(5, ge=1, le=1000)
    """Consecutive failures that open a target's circuit breaker."""

    breaker_reset_s: float = Field(10.0, gt=0, le=3600)
    """Seconds an open breaker waits before letting one probe call through (half-open)."""

    dependency_poll_s: float = Field(5.0, gt=0, le=600)
    """How often /health/ready's view of required dependencies is refreshed (in the background)."""

    def secret_token(self) -> str | None:
        token = self.service_auth_token.get_secret_value() if self.service_auth_token else ""
        return token or None
