"""Who a turn is for: handed to the agent's tools (LangChain ``ToolRuntime.context``) and to memory."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TurnContext:
    """The ids of one turn. ``session_id`` keys memory; ``channel_id`` is where SendDiscordMessage posts
    when the model names no channel."""

    session_id: str
    user_id: str | None = None
    channel_id: str | None = None
