"""Settings of the llm service. The only code of the service that reads the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings, service_env_files


class Settings(BaseServiceSettings):
    """Environment of the llm service: the fleet-wide settings plus the ``LLM_*`` ones."""

    model_config = SettingsConfigDict(env_file=service_env_files(__file__))

    service_name: ClassVar[str] = "llm"

    port: int = Field(8000, ge=1, le=65535)
    """Port to listen on; 8000 is the compose host port of ``llm``."""

    llm_model_path: Path | None = None
    """GGUF chat model to serve, loaded once at start (the service is ready when it is loaded): a path to a
    ``.gguf`` file with a chat template, served under its file stem. Empty: the bundled model
    ``LLM_BUNDLED_MODEL``. Either is also served under the alias ``llm``."""

    llm_bundled_model: Literal["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m"] = "qwen2.5-coder-0.5b"
    """Model served when LLM_MODEL_PATH is empty, from the packages of the ``llm`` extra (no model hub):
    ``qwen2.5-coder-0.5b`` (Qwen2.5-Coder-0.5B-Instruct, the default: 39/40 and 28-29/30 right on this fleet's
    assistant evaluation with voice-to-first-audio p50 ~1.3 s on 2 cores), ``qwen2.5-coder-1.5b``
    (Qwen2.5-Coder-1.5B-Instruct Q4_K_M: slightly more right, ~0.8 s slower per turn), ``smollm2-135m``
    (fastest, rarely right). docs/guides/langchain-agents.md#measured has the figures."""

    llm_models_dir: Path | None = None
    """Where a bundled model shipped in chunks is joined (and checked against its SHA-256) on first start;
    empty: ``$XDG_CACHE_HOME/audio-orchestrator/models`` (``~/.cache/...``)."""

    llm_n_ctx: int = Field(2048, ge=256, le=131_072)
    """Context window in tokens: prompt plus generated tokens of one request. At most the model's training
    context (32768 for Qwen2.5-Coder, 8192 for SmolLM2). Longer histories lose their oldest non-system messages first."""

    llm_n_threads: int = Field(0, ge=0, le=256)
    """CPU threads for prompt processing and generation; 0 = half the CPUs this process may use (its
    affinity mask, capped by a container's CPU quota), at least 1. llama.cpp's threads spin while waiting
    for each other, so more threads than idle cores make generation stall: give it every core only on a
    machine or container of its own."""

    llm_max_tokens: int = Field(512, ge=1, le=131_072)
    """Generated tokens per choice when a request sets no ``max_tokens``, and the most a request may ask
    for (more is refused with 422, never cut). Must be below ``LLM_N_CTX``; this many tokens are kept free
    for the answer when an over-long history is cut."""

    llm_temperature: float = Field(0.2, ge=0.0, le=2.0)
    """Sampling temperature when a request sets none; 0 = greedy (deterministic). 0.2 is what the
    SmolLM2 model card suggests."""

    llm_top_p: float = Field(0.9, gt=0.0, le=1.0)
    """Nucleus sampling mass (top_p) when a request sets none; 1 = no cut. 0.9 follows the model card."""

    llm_prompt_cache: bool = False
    """Reuse the KV cache for the part of a prompt the previous request shared with it (the orchestrator's
    system prompt and tool list are then evaluated once, later turns only evaluate what is new: seconds saved
    per turn on a CPU). The price: a temperature-0 answer may differ in rare cases from the one a fresh
    evaluation gives (another batch shape moves logits in their last bits). false: every request evaluates
    its prompt afresh, so temperature 0 is exactly reproducible. The fleet's ``.env.service`` turns it on."""

    llm_prompt_cache_mb: int = Field(256, ge=0, le=65_536)
    """With LLM_PROMPT_CACHE: memory for saved context states (``states.py``), so a prompt continues from the
    longest prefix any recent request evaluated, not only the previous one (sessions that take turns; the
    system prompt with and without tools). ~12-28 KB per token for the bundled models. 0: the previous
    request's prefix only."""

    llm_extra_buffer_types: bool = False
    """Let llama.cpp put weights into its extra buffer types (weights repacked for the CPU's AMX or AVX
    kernels). Off: every weight stays in the plain CPU buffer. With llama-cpp-python 0.3.36 built for a CPU
    with AMX, the AMX buffer crashed the first decode (SIGSEGV); this project's build leaves AMX out and keeps
    this off too (docs/guides/llm-fallback.md, "llama.cpp build"). The load line in the log and
    /health/ready name the buffers in use."""

    @field_validator("max_concurrency")
    @classmethod
    def _one_context(cls, v: int) -> int:
        if v != 1:
            raise ValueError(
                "MAX_CONCURRENCY must be 1 for llm: one llama.cpp context serves one generation at a time "
                "(requests beyond it wait in MAX_QUEUE)"
            )
        return v

    @model_validator(mode="after")
    def _room_for_a_prompt(self) -> Settings:
        if self.llm_max_tokens >= self.llm_n_ctx:
            raise ValueError(
                f"LLM_MAX_TOKENS ({self.llm_max_tokens}) must be below LLM_N_CTX ({self.llm_n_ctx}), "
                "leaving room for the prompt"
            )
        return self

    def models_dir(self) -> Path:
        if self.llm_models_dir is not None:
            return self.llm_models_dir.expanduser()
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "audio-orchestrator" / "models"
