"""Settings of the tts-bark service. The only code of the service that reads the environment."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings, service_env_files

BARK_MODELS = {False: "suno/bark", True: "suno/bark-small"}
"""Hub id of the Bark checkpoint used when ``BARK_MODEL`` is empty, by ``BARK_USE_SMALL_MODELS``."""

BARK_PRESET = re.compile(r"^v2/en_speaker_[0-9]$")
"""The voice presets this service speaks with: suno's English v2 speakers 0..9."""


class Settings(BaseServiceSettings):
    """Environment of the tts-bark service: the fleet-wide settings plus the ``BARK_*``, ``PIPER_*`` and
    ``TTS_BARK_*`` ones."""

    model_config = SettingsConfigDict(env_file=service_env_files(__file__))

    service_name: ClassVar[str] = "tts-bark"

    port: int = Field(7120, ge=1, le=65535)
    """Port to listen on; 7120 is the compose host port of ``tts-bark`` (7100 inside the container)."""

    request_timeout_s: float = Field(300.0, gt=0, le=3600)
    """Time budget of a whole answer (every sentence, streamed or not) when the caller sends no
    ``X-Deadline-Ms``. Longer than the fleet's 60 s: Bark speaks a long answer sentence by sentence."""

    bark_model: str | None = None
    """Bark checkpoint: a Hugging Face hub id or a local directory (config.json, generation_config.json,
    weights, tokenizer files and ``speaker_embeddings_path.json`` with its .npy presets). Empty:
    ``suno/bark``, or ``suno/bark-small`` when ``BARK_USE_SMALL_MODELS`` is true."""

    bark_use_small_models: bool = False
    """Use ``suno/bark-small`` (about 1.7 GB of fp32 weights, faster) instead of ``suno/bark`` (about 4.5 GB,
    better voices) when ``BARK_MODEL`` is empty."""

    bark_voice_preset: str = "v2/en_speaker_1"
    """Voice of requests that name none: ``v2/en_speaker_0`` .. ``v2/en_speaker_9``."""

    bark_device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where Bark runs: ``auto`` = CUDA when torch sees a GPU (fp16), else CPU (fp32)."""

    bark_cpu_threads: int = Field(0, ge=0, le=256)
    """torch CPU threads for Bark (process-wide); 0 = torch's default, one per core. On a CPU shared with
    other busy processes, fewer threads than cores avoid OpenMP threads waiting for each other."""

    bark_allow_download: bool = True
    """Download a hub checkpoint missing from the Hugging Face cache at start (progress on stderr); false =
    files on disk only. A checkpoint that cannot be found leaves Bark not loaded (reason in /health/ready)
    and every sentence goes to Piper."""

    bark_sentence_timeout_s: float = Field(30.0, gt=0, le=600)
    """Seconds Bark may take for one sentence (waiting for the model included); past it Bark's generation is
    cancelled and that sentence, and the rest of the answer, go to Piper."""

    bark_max_sentence_chars: int = Field(180, ge=20, le=400)
    """Longest piece of text handed to Bark at once, in characters. Bark speaks at most ~13 s per call, so
    longer sentences are cut at commas/colons/dashes, else at spaces."""

    bark_max_text_chars: int = Field(2000, ge=1, le=100_000)
    """Longest text one request may synthesize, in characters; longer text is rejected (422), never cut."""

    piper_fallback_url: str = "http://127.0.0.1:7000"
    """Base URL of the tts (Piper) service that speaks every sentence Bark cannot, and Piper voices."""

    piper_timeout_s: float = Field(10.0, gt=0, le=300)
    """Seconds one sentence may take at the Piper service (connection refused fails at once)."""

    tts_bark_sample_rate_hz: int = Field(24_000, ge=8_000, le=48_000)
    """Sample rate of every answer. Bark speaks at 24 kHz and Piper at 22.05 kHz; both are resampled (soxr)
    to this rate, so an answer mixing the two is one stream."""

    @field_validator("bark_voice_preset")
    @classmethod
    def _preset(cls, value: str) -> str:
        if not BARK_PRESET.match(value):
            raise ValueError(f"BARK_VOICE_PRESET must be v2/en_speaker_0 .. v2/en_speaker_9, got {value!r}")
        return value

    @field_validator("piper_fallback_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"PIPER_FALLBACK_URL must be an http(s) URL such as http://127.0.0.1:7000, got {value!r}")
        return value

    def bark_model_id(self) -> str:
        """``BARK_MODEL`` resolved: empty becomes ``suno/bark`` or ``suno/bark-small``."""
        return (self.bark_model or "").strip() or BARK_MODELS[self.bark_use_small_models]
