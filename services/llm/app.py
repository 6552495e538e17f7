"""llm routes: the fleet's OpenAI chat routes (``/v1/chat/completions``, ``/v1/models``) over the llama.cpp
engine, plus the common /health/* and /metrics. No routes of its own."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.app import create_service_app
from services.common.openai_chat import ChatEngine, chat_router
from services.llm.engine import LlamaCppEngine
from services.llm.settings import Settings


def create_app(settings: Settings, engine: ChatEngine | None = None) -> FastAPI:
    engine = engine or LlamaCppEngine(settings)
    app = create_service_app(settings, components=[engine],
                             routers=[chat_router(engine, owned_by="audio-orchestrator")], title="llm (llama.cpp)")
    app.state.engine = engine
    return app
