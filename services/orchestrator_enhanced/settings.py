"""Settings of orchestrator-enhanced (and of the plain ``orchestrator``: the same code with
``ENABLE_LANGCHAIN=false``). The only code of the service that reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.ratelimit import check_rate_limit
from services.common.settings import BaseServiceSettings, data_path, service_env_files

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
"""Versioned system prompts shipped with the service: ``prompts/<PROMPT_VERSION>.md``."""


class Settings(BaseServiceSettings):
    """Environment of orchestrator-enhanced: the fleet-wide settings plus the plan's ``.env.enhanced`` flags
    (``LLM_PRIMARY_URL``, ``TTS_PRIMARY_URL``, ``ENABLE_PREPROCESSING``, ``ENABLE_GUARDRAILS``,
    ``ENABLE_LANGCHAIN``) and the agent's own."""

    model_config = SettingsConfigDict(env_file=service_env_files(__file__))

    service_name: ClassVar[str] = "orchestrator-enhanced"

    port: int = Field(8220, ge=1, le=65535)
    """Port to listen on; 8220 is the compose host port of ``orchestrator-enhanced`` (8200 inside the container)."""

    request_timeout_s: float = Field(60.0, gt=0, le=3600)
    """Time budget of one turn (guardrails, agent with its tool calls, speech) when the caller sends no
    ``X-Deadline-Ms``. Every call inside the turn gets what is left of it."""

    max_concurrency: int = Field(4, ge=1, le=256)
    """Turns processed at once; the rest wait in a queue of ``MAX_QUEUE``."""

    max_queue: int = Field(32, ge=0, le=10_000)
    """Turns allowed to wait for a slot; one more is refused with 503 ``busy`` and ``Retry-After``."""

    # --- feature flags (.env.enhanced) -------------------------------------------------------------------
    enable_langchain: bool = True
    """true: the LangChain agent with tools (orchestrator-enhanced). false: direct chat with the LLM, no
    tools (the base fleet's plain ``orchestrator``, same code)."""

    enable_guardrails: bool = True
    """Check every transcript with guardrails' /validate/input before the agent and every answer with
    /validate/output after it."""

    enable_preprocessing: bool = True
    """Voice turns: denoise the audio with audio-preprocessor before transcription (a failing preprocessor
    is skipped: the raw audio is transcribed)."""

    # --- LLMs ------------------------------------------------------------------------------------------------
    llm_primary_url: str = "http://127.0.0.1:8110"
    """Primary LLM (llm-flan), an OpenAI-compatible server; ``/v1`` is appended when missing."""

    llm_primary_model: str = "llm-flan"
    """Model name sent to the primary LLM."""

    llm_fallback_url: str | None = "http://127.0.0.1:8000"
    """Fallback LLM (llm: Qwen2.5-Coder-0.5B on llama.cpp), used when the primary fails, times out or is known down.
    Empty: no fallback."""

    llm_fallback_model: str = "llm"
    """Model name sent to the fallback LLM."""

    llm_primary_timeout_s: float = Field(20.0, gt=0, le=600)
    """Most seconds one primary LLM call may take (less when the turn has less left), so the fallback still
    has time; a call past it goes to the fallback."""

    llm_max_tokens: int = Field(96, ge=1, le=4096)
    """Most tokens of one LLM answer (voice answers are short)."""

    llm_temperature: float = Field(0.0, ge=0.0, le=2.0)
    """Sampling temperature of the LLM calls (0 = deterministic)."""

    local_intents: bool = True
    """Answer requests a rule answers exactly (the time, the date, arithmetic, unit conversions) with the
    tool at once, and what the assistant cannot do (timers, devices, music, calls; web look-ups and messages
    without their tools) with one sentence saying so, without asking the LLM (``llm_engine`` is
    ``local-intent``). false: the LLM gets every request."""

    tool_selection: Literal["relevant", "all"] = "relevant"
    """Which tools the LLM is offered on a turn: ``relevant`` = only those the request may need (a number or
    arithmetic word for Calculator, a time or date word for GetCurrentTime, ...; small models call any tool
    they are shown), ``all`` = every tool on every turn."""

    agent_max_steps: int = Field(4, ge=1, le=20)
    """Most model calls of one agent turn (each tool round is one more); past it the turn answers with what
    it has."""

    # --- prompt --------------------------------------------------------------------------------------------
    prompt_version: str = Field("v2.0", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    """System prompt version: the file ``prompts/<PROMPT_VERSION>.md`` of PROMPTS_DIR. Reported in every
    response and in the turn metrics."""

    prompts_dir: Path | None = None
    """Directory of versioned system prompts (``<version>.md``); empty: the ones shipped with the service
    (``services/orchestrator_enhanced/prompts``)."""

    # --- memory ---------------------------------------------------------------------------------------------
    memory_url: str | None = Field(None, validation_alias=AliasChoices("MEMORY_URL", "REDIS_URL"))
    """Where conversation memory lives: empty = SQLite at ``MEMORY_DB_PATH``; ``redis://host:6379/0``
    (``MEMORY_URL``, or ``REDIS_URL``) = Redis, shared by replicas."""

    memory_db_path: Path | None = None
    """SQLite file of conversation memory (when no MEMORY_URL); empty:
    ``$XDG_DATA_HOME/audio-orchestrator/memory.sqlite3`` (``~/.local/share/...``)."""

    memory_max_tokens: int = Field(1024, ge=16, le=1_000_000)
    """Token budget of the history sent with each turn; older turns are dropped first (they stay stored)."""

    memory_ttl_s: int = Field(0, ge=0, le=365 * 86400)
    """Redis memory only: seconds a session's history is kept after its last turn (0 = forever)."""

    # --- guardrails -----------------------------------------------------------------------------------------
    guardrails_url: str = "http://127.0.0.1:9310"
    """guardrails service (/validate/input, /validate/output, /escalate)."""

    guardrails_fail_mode: Literal["closed", "open"] = "closed"
    """When guardrails cannot be reached: ``closed`` refuses the turn with a spoken apology (nothing reaches
    the LLM unchecked); ``open`` goes on without the check (logged and counted)."""

    guardrails_timeout_s: float = Field(5.0, gt=0, le=120)
    """Most seconds one guardrails call may take."""

    # --- speech ---------------------------------------------------------------------------------------------
    stt_url: str = "http://127.0.0.1:9000"
    """stt service (voice turns)."""

    preprocessor_url: str = "http://127.0.0.1:9210"
    """audio-preprocessor service (voice turns when ENABLE_PREPROCESSING is true)."""

    tts_primary_url: str = "http://127.0.0.1:7120"
    """Primary TTS (tts-bark), asked first when a turn is spoken."""

    tts_fallback_url: str | None = "http://127.0.0.1:7000"
    """Fallback TTS (tts: Piper) when the primary fails or times out. Empty: no fallback."""

    tts_primary_timeout_s: float = Field(15.0, gt=0, le=600)
    """Most seconds the primary TTS may take for one sentence before the fallback speaks it."""

    voice_max_upload_bytes: int = Field(25_000_000, ge=1000, le=500_000_000)
    """Largest audio upload of a voice turn; a larger one is refused with 413."""

    tts_voice: str | None = None
    """Voice asked of the primary TTS (e.g. ``v2/en_speaker_1``); empty: its default. The fallback always
    speaks with its own default voice."""

    # --- rate limit -----------------------------------------------------------------------------------------
    rate_limit: str = Field("10/minute", min_length=1)
    """Turns one client may start (POST /mcp/transcript, /v1/voice/turn, the stream), in slowapi notation.
    The client is the caller's own bearer token, else X-Client-Id, else X-Session-Id, else the body's
    session_id, else the IP address."""

    rate_limit_storage_url: str | None = None
    """Rate-limit counts: empty = in memory (per process); ``redis://host:6379/0`` = shared by replicas."""

    # --- tools ----------------------------------------------------------------------------------------------
    discord_api_url: str | None = None
    """Discord service base URL for the SendDiscordMessage tool (``POST /channels/{channel_id}/messages``).
    Empty: the tool is not offered, and the assistant says it cannot send messages."""

    discord_default_channel_id: str | None = None
    """Channel SendDiscordMessage posts to when neither the model nor the turn names one."""

    search_url: str | None = None
    """SearXNG-style search endpoint for the SearchWeb tool (``GET <url>?q=...&format=json``). Empty: the tool
    is not offered, and the assistant says it cannot look things up."""

    search_max_results: int = Field(3, ge=1, le=20)
    """Results SearchWeb gives the model."""

    tools_timeout_s: float = Field(8.0, gt=0, le=120)
    """Most seconds one tool call (Discord, search) may take."""

    assistant_timezone: str = "UTC"
    """IANA time zone the time/date tool answers in when the request names none (e.g. ``Europe/Berlin``)."""

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        return check_rate_limit(value)

    @field_validator("assistant_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"ASSISTANT_TIMEZONE {value!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") \
                from exc
        return value

    def memory_path(self) -> Path:
        if self.memory_db_path is not None:
            return self.memory_db_path
        return data_path("memory.sqlite3")

    def storage_uri(self) -> str:
        return self.rate_limit_storage_url or "memory://"

    def prompt_dir(self) -> Path:
        return self.prompts_dir or PROMPTS_DIR

    def prompt_file(self) -> Path:
        return self.prompt_dir() / f"{self.prompt_version}.md"
