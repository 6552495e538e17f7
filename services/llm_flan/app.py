"""llm-flan routes: OpenAI ``POST /v1/chat/completions`` and ``GET /v1/models`` (from the shared chat router)
over the FLAN-T5 engine, plus the fleet's /health/* and /metrics from the app factory."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.app import create_service_app
from services.common.openai_chat import ChatEngine, chat_router
from services.llm_flan.engine import FlanT5Engine
from services.llm_flan.settings import Settings


def create_app(settings: Settings, engine: ChatEngine | None = None) -> FastAPI:
    engine = engine or FlanT5Engine(settings)
    return create_service_app(settings, components=[engine], routers=[chat_router(engine, owned_by="google")])
