"""Settings of the tts service. The only code of the service that reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings, service_env_files


class Settings(BaseServiceSettings):
    """Environment of the tts service: the fleet-wide settings plus the ``TTS_*`` ones."""

    model_config = SettingsConfigDict(env_file=service_env_files(__file__))

    service_name: ClassVar[str] = "tts"

    port: int = Field(7000, ge=1, le=65535)
    """Port to listen on; 7000 is the compose host port of ``tts``."""

    tts_voice: str = Field("en_US-joe-medium", min_length=1)
    """Default voice: the name of a known voice (the bundled ``en_US-joe-medium`` or the file stem of a
    model in ``TTS_VOICES_DIR``), or a path to a Piper ``.onnx`` model whose ``.onnx.json`` lies beside it.
    Requests that name no voice use it; the service is ready once it is loaded."""

    tts_voices_dir: Path | None = None
    """Extra directory of Piper voices: every ``<name>.onnx`` with a ``<name>.onnx.json`` beside it becomes
    voice ``<name>`` (a voice here replaces a bundled one of the same name). Empty: bundled voice only."""

    tts_max_text_chars: int = Field(2000, ge=1, le=100_000)
    """Longest text one request may synthesize, in characters; longer text is rejected (422), never cut."""
