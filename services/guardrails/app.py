"""guardrails routes: /validate/input, /validate/output, /escalate, /escalations. Routes only: the
pipelines (`pipeline.Guard`) judge, the runner keeps them off the event loop, the store persists."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.common import context
from services.common.app import create_service_app
from services.guardrails.escalations import EscalationStore
from services.guardrails.pipeline import Guard, Verdict
from services.common.ratelimit import SESSION_STATE, build_limiter, install_rate_limit
from services.common.settings import redact_url
from services.guardrails.settings import Settings


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("text must not be empty")
    return value


class InputBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="A user's request (e.g. a transcript). Empty or blank: 422. Longer than "
                                  "MAX_INPUT_LENGTH: answered with safe=false, reason=too_long.")
    session_id: str | None = Field(None, max_length=128, description="The conversation; keys the rate limit when "
                                                                      "no client header does.")

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        return _not_blank(value)


class OutputBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="Text the assistant is about to say. Empty or blank: 422.")

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        return _not_blank(value)


class InputVerdict(BaseModel):
    safe: bool
    reason: str | None = Field(description="Why not safe: too_long, injection, jailbreak, toxicity or "
                                           "guardrail_error; null when safe.")
    sanitized: str = Field(description="The text normalised (NFKC, invisible characters removed, spaces tidied).")
    scores: dict[str, float] = Field(description="Risk 0..1 per check that ran.")
    details: dict[str, list[str]] = Field(default_factory=dict, description="What fired, per check (rule names, "
                                                                             "labels).")


class OutputVerdict(BaseModel):
    safe: bool
    reason: str | None = Field(description="Why not safe: toxicity or guardrail_error; null when safe. PII alone "
                                           "does not make an output unsafe: it is redacted in `filtered`.")
    filtered: str = Field(description="The text with PII replaced by typed placeholders ([EMAIL_REDACTED], ...).")
    scores: dict[str, float]
    redactions: dict[str, int] = Field(default_factory=dict, description="PII type -> how many were redacted.")


class EscalateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500, description="Why a human should look (free text).")
    context: Any = Field(None, description="Any JSON: the transcript, the verdict, ids.")
    session_id: str | None = Field(None, max_length=128)


def _input_answer(v: Verdict) -> InputVerdict:
    return InputVerdict(safe=v.safe, reason=v.reason, sanitized=v.text, scores=v.scores, details=v.details)


def create_app(settings: Settings, guard: Guard | None = None, store: EscalationStore | None = None) -> FastAPI:
    guard = guard or Guard(settings)
    store = store or EscalationStore(settings.db_path())
    limiter = build_limiter(settings.storage_uri(), service_token=settings.secret_token(),
                            key_prefix=settings.service_name)
    router = APIRouter()

    @limiter.limit(settings.rate_limit)
    async def limited_input(request: Request, body: InputBody) -> InputVerdict:
        return _input_answer(await guard.validate_input(body.text))

    @router.post("/validate/input", response_model=InputVerdict)
    async def validate_input(request: Request, body: InputBody) -> InputVerdict:
        """Judge a user's request: length, prompt injection / jailbreak, toxicity. Rate-limited per client
        (RATE_LIMIT; 429 with Retry-After)."""
        if body.session_id:
            setattr(request.state, SESSION_STATE, body.session_id)
        return await limited_input(request=request, body=body)

    @router.post("/validate/output", response_model=OutputVerdict)
    async def validate_output(body: OutputBody) -> OutputVerdict:
        """Judge what the assistant is about to say: toxicity; PII is redacted in `filtered`."""
        v = await guard.validate_output(body.text)
        counts: dict[str, int] = {}
        for entity in v.details.get("pii", []):
            counts[entity] = counts.get(entity, 0) + 1
        return OutputVerdict(safe=v.safe, reason=v.reason, filtered=v.text, scores=v.scores, redactions=counts)

    @router.post("/escalate", status_code=201)
    async def escalate(body: EscalateBody) -> dict[str, Any]:
        """Keep a case for human review (SQLite, survives restarts)."""
        item = await store.add(body.reason, body.context, session_id=body.session_id,
                               correlation_id=context.get_correlation_id())
        return item.as_dict()

    @router.get("/escalations")
    async def escalations(limit: int = Query(50, ge=1, le=1000),
                          since: datetime | None = Query(None, description="ISO 8601; only newer ones "
                                                                            "(no zone = UTC)")) -> dict[str, Any]:
        """Escalations, newest first."""
        items = await store.list(limit=limit, since=since)
        return {"escalations": [i.as_dict() for i in items], "count": len(items)}

    @router.get("/config")
    async def config() -> dict[str, Any]:
        """The checks this instance runs and the fail mode its consumers should apply."""
        return {**guard.describe(), "rate_limit": settings.rate_limit,
                "rate_limit_storage": redact_url(settings.storage_uri())}

    components = [*guard.components(), store]
    app = create_service_app(settings, components=components, routers=[router], title="guardrails")
    install_rate_limit(app, limiter)
    app.state.guard = guard
    app.state.store = store
    app.state.limiter = limiter
    return app
