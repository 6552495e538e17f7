"""Who a turn is for: handed to the agent's tools (LangChain ``ToolRuntime.context``) and to memory."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TurnContext:
    """The ids of one turn and how the caller wants it delivered. ``session_id`` keys memory; ``channel_id``
    is where SendDiscordMessage posts when the model names no channel."""

    session_id: str
    user_id: str | None = None
    channel_id: str | None = None
    voice: str | None = None
    """TTS voice of this turn (a Bark preset or Piper voice from tts-bark's GET /voices); None: TTS_VOICE."""
    preprocess: bool | None = None
    """Denoise this turn's audio before stt; None: ENABLE_PREPROCESSING."""
