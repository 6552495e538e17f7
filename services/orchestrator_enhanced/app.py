"""orchestrator-enhanced routes (routes only; the turn itself is `pipeline.Orchestrator`).

- ``POST /mcp/transcript``: a transcript in, the answer out (spoken too with ``speak: true``).
- ``POST /v1/voice/turn``: audio in (multipart ``file``), transcript + answer + WAV out, per-stage timings.
- ``POST /v1/voice/turn/stream``: the same as Server-Sent Events: ``transcript``, then ``text`` and ``audio`` per
  sentence as soon as each is spoken, then ``done`` (or ``error``).
- ``GET /tools``, ``GET /prompt``, ``GET|DELETE /sessions/{session_id}/history``.

The three turn routes share one per-client rate limit (RATE_LIMIT, slowapi; 429 with Retry-After) and one
bound on concurrent turns (MAX_CONCURRENCY + MAX_QUEUE; 503 ``busy`` with Retry-After beyond it).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import StreamingResponse
from langchain_core.messages import BaseMessage
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.common import context
from services.common.app import Dependency, create_service_app
from services.common.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    ServiceError,
    UpstreamFailedError,
)
from services.common.ratelimit import SESSION_STATE, build_limiter, install_rate_limit
from services.common.settings import redact_url
from services.orchestrator_enhanced.agent import Agent, PromptWarmer, describe_tools, load_system_prompt
from services.orchestrator_enhanced.guard import Guardrails
from services.orchestrator_enhanced.llm import build_models
from services.orchestrator_enhanced.memory import ConversationMemory, build_memory
from services.orchestrator_enhanced.pipeline import Orchestrator, new_session_id
from services.orchestrator_enhanced.settings import Settings
from services.orchestrator_enhanced.speech import Speech
from services.orchestrator_enhanced.tools import build_tools
from services.orchestrator_enhanced.turn import TurnContext

log = logging.getLogger(__name__)

MAX_TRANSCRIPT_CHARS = 4000
"""Longest transcript POST /mcp/transcript accepts (guardrails' MAX_INPUT_LENGTH refuses long ones earlier)."""
_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
_ID_RULE = "1-128 characters of letters, digits and . _ : @ -"


Audio = Annotated[UploadFile | None, File(description="Audio: WAV, FLAC, OGG or MP3, any rate/channels.")]
SessionForm = Annotated[str | None, Form(description=f"Conversation to continue ({_ID_RULE}).")]
UserForm = Annotated[str | None, Form(description=f"Who speaks ({_ID_RULE}).")]
ChannelForm = Annotated[str | None, Form(description=f"Discord channel of the turn ({_ID_RULE}).")]
_VOICE = re.compile(r"^[A-Za-z0-9._/-]{1,100}$")
_VOICE_RULE = "a voice name from tts-bark's GET /voices (a Bark preset or a Piper voice; 1-100 of A-Z a-z 0-9 . _ / -)"
VoiceForm = Annotated[str | None, Form(description=f"TTS voice of this turn: {_VOICE_RULE}; default TTS_VOICE.")]
PreprocessForm = Annotated[bool | None, Form(description="Denoise this recording before stt (true/false); "
                                                         "default ENABLE_PREPROCESSING.")]


def _check_voice(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not _VOICE.match(value):
        raise InvalidRequestError(f"voice must be {_VOICE_RULE}; got {value[:40]!r}", param="voice")
    return value


def _check_id(name: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not _ID.match(value):
        raise InvalidRequestError(f"{name} must be {_ID_RULE}; got {value[:40]!r}", param=name)
    return value


class TranscriptBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transcript: str = Field(min_length=1, max_length=MAX_TRANSCRIPT_CHARS,
                            description=f"What the user said (1-{MAX_TRANSCRIPT_CHARS} characters).")
    session_id: str | None = Field(None, description=f"Conversation to continue ({_ID_RULE}); a new one when "
                                                     "omitted (returned in the answer).")
    user_id: str | None = Field(None, description=f"Who speaks ({_ID_RULE}); keys the rate limit.")
    channel_id: str | None = Field(None, description=f"Discord channel of the turn ({_ID_RULE}); where "
                                                     "SendDiscordMessage posts by default.")
    speak: bool = Field(False, description="Also speak the answer: base64 WAV in `audio`.")
    voice: str | None = Field(None, description=f"TTS voice when speaking: {_VOICE_RULE}; default TTS_VOICE.")

    @field_validator("transcript")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("transcript must not be blank")
        return value

    @field_validator("session_id", "user_id", "channel_id")
    @classmethod
    def _ids(cls, value: str | None) -> str | None:
        if value is not None and not _ID.match(value):
            raise ValueError(f"must be {_ID_RULE}")
        return value


def _context(session_id: str | None, user_id: str | None, channel_id: str | None, *, voice: str | None = None,
             preprocess: bool | None = None) -> TurnContext:
    return TurnContext(session_id=session_id or new_session_id(), user_id=user_id, channel_id=channel_id,
                       voice=_check_voice(voice), preprocess=preprocess)


def _message_json(m: BaseMessage) -> dict[str, Any]:
    return {"role": {"human": "user", "ai": "assistant"}.get(m.type, m.type), "content": m.content}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def create_app(settings: Settings, *, orchestrator: Orchestrator | None = None,
               memory: ConversationMemory | None = None) -> FastAPI:
    """The service. Tests pass an `Orchestrator` built on scripted chat models (and a memory of their own)."""
    if orchestrator is None:
        primary, fallback = build_models(settings)
        tools = build_tools(settings)
        agent = Agent(settings, primary=primary, fallback=fallback, tools=tools,
                      system_prompt=load_system_prompt(settings))
        memory = memory or build_memory(settings)
        orchestrator = Orchestrator(settings, agent=agent, memory=memory, guard=Guardrails(settings),
                                    speech=Speech(settings))
    orch = orchestrator
    limiter = build_limiter(settings.storage_uri(), service_token=settings.secret_token(),
                            key_prefix=settings.service_name)
    turns_limit = limiter.shared_limit(settings.rate_limit, scope="turns")
    router = APIRouter()

    def limit_by_session(request: Request, session_id: str | None) -> None:
        if session_id:
            setattr(request.state, SESSION_STATE, session_id)

    @turns_limit
    async def text_turn(request: Request, body: TranscriptBody) -> dict[str, Any]:
        ctx = _context(body.session_id, body.user_id, body.channel_id, voice=body.voice)
        async with orch.gate.slot():
            result = await orch.text_turn(body.transcript, ctx, speak=body.speak)
        return result.as_json()

    @router.post("/mcp/transcript")
    async def transcript(request: Request, body: TranscriptBody) -> dict[str, Any]:
        """Answer a transcript: input guardrails, the agent (tools, memory, fallback LLM), output guardrails.
        Returns response, session_id, prompt_version, llm_engine, tool_calls, blocked, timings (ms)."""
        limit_by_session(request, body.session_id)
        return await text_turn(request=request, body=body)

    async def read_audio(file: UploadFile | None) -> bytes:
        if file is None:
            raise InvalidRequestError("send the audio as the multipart field `file` (WAV, FLAC, OGG or MP3)",
                                      param="file")
        limit = settings.voice_max_upload_bytes
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLargeError(f"audio is over the limit of {limit} bytes (VOICE_MAX_UPLOAD_BYTES)",
                                       param="file")
        if not data:
            raise InvalidRequestError("the audio file is empty", param="file")
        return data

    def as_client_error(exc: ServiceError) -> ServiceError:
        """stt refusing the audio (4xx) is the caller's problem: answer it as our own 4xx."""
        status = getattr(exc, "upstream_status", None)
        if isinstance(exc, UpstreamFailedError) and status in (413, 415, 422):
            cls = PayloadTooLargeError if status == 413 else InvalidRequestError
            return cls(f"the audio was refused: {exc.message}", param="file")
        return exc

    @turns_limit
    async def run_voice(request: Request, audio: bytes, ctx: TurnContext) -> dict[str, Any]:
        async with orch.gate.slot():
            try:
                result = await orch.voice_turn(audio, ctx)
            except ServiceError as exc:
                raise as_client_error(exc) from exc
        return result.as_json()

    @router.post("/v1/voice/turn")
    async def voice_turn(request: Request, file: Audio = None, session_id: SessionForm = None,
                         user_id: UserForm = None, channel_id: ChannelForm = None, voice: VoiceForm = None,
                         preprocess: PreprocessForm = None) -> dict[str, Any]:
        """One voice turn: denoise (ENABLE_PREPROCESSING) -> stt -> guardrails -> agent -> guardrails -> tts.
        Returns transcript, response, base64 WAV `audio`, tts engine and per-stage timings (ms)."""
        ctx = _context(_check_id("session_id", session_id), _check_id("user_id", user_id),
                       _check_id("channel_id", channel_id), voice=voice, preprocess=preprocess)
        audio = await read_audio(file)
        limit_by_session(request, ctx.session_id if session_id else None)
        return await run_voice(request=request, audio=audio, ctx=ctx)

    @turns_limit
    async def voice_stream(request: Request, audio: bytes, ctx: TurnContext) -> StreamingResponse:
        slot = orch.gate.slot()
        await slot.__aenter__()  # busy -> 503 before the stream starts
        events = orch.voice_turn_stream(audio, ctx)
        try:
            first = await anext(events)  # the transcript: stt errors are still a status code
        except BaseException as exc:
            await slot.__aexit__(type(exc), exc, exc.__traceback__)
            if isinstance(exc, ServiceError):
                raise as_client_error(exc) from exc
            raise

        async def body() -> AsyncIterator[bytes]:
            try:
                yield _sse(first["event"], first)
                async for event in events:
                    yield _sse(event["event"], event)
            except ServiceError as exc:  # after the first event the status is sent: the error is an event
                yield _sse("error", exc.body(context.get_correlation_id()))
            except Exception:  # noqa: BLE001 - logged; the client gets the error shape, not a cut stream
                log.exception("streamed voice turn failed")
                yield _sse("error", {"error": {"code": "engine_failed", "message": "internal error",
                                               "retryable": False,
                                               "correlation_id": context.get_correlation_id()}})
            finally:
                await events.aclose()
                await slot.__aexit__(None, None, None)

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Session-Id": ctx.session_id})

    @router.post("/v1/voice/turn/stream")
    async def voice_turn_stream(request: Request, file: Audio = None, session_id: SessionForm = None,
                                user_id: UserForm = None, channel_id: ChannelForm = None, voice: VoiceForm = None,
                                preprocess: PreprocessForm = None) -> StreamingResponse:
        """A voice turn as Server-Sent Events: `transcript`, then per sentence `text` and `audio` (base64 WAV)
        as soon as each is ready (the first audio does not wait for the whole answer), then `done` with the
        same fields as POST /v1/voice/turn (without audio). Errors after the first event: an `error` event."""
        ctx = _context(_check_id("session_id", session_id), _check_id("user_id", user_id),
                       _check_id("channel_id", channel_id), voice=voice, preprocess=preprocess)
        audio = await read_audio(file)
        limit_by_session(request, ctx.session_id if session_id else None)
        return await voice_stream(request=request, audio=audio, ctx=ctx)

    @router.get("/tools")
    async def tools() -> dict[str, Any]:
        """The tools the agent can call (none with ENABLE_LANGCHAIN=false)."""
        return {"mode": orch.agent.mode, "tools": describe_tools(orch.agent.tools)}

    @router.get("/prompt")
    async def prompt() -> dict[str, Any]:
        """The system prompt in use and its version."""
        return {"prompt_version": settings.prompt_version, "system_prompt": orch.agent.system_prompt}

    @router.get("/sessions/{session_id}/history")
    async def history(session_id: str) -> dict[str, Any]:
        """A session's stored conversation, oldest first."""
        _check_id("session_id", session_id)
        messages = await orch.memory.load(session_id)
        return {"session_id": session_id, "messages": [_message_json(m) for m in messages]}

    @router.delete("/sessions/{session_id}/history")
    async def forget(session_id: str) -> dict[str, Any]:
        """Forget a session's conversation."""
        _check_id("session_id", session_id)
        await orch.memory.clear(session_id)
        return {"session_id": session_id, "cleared": True}

    @router.get("/config")
    async def config() -> dict[str, Any]:
        """Feature flags and targets of this instance (no secrets)."""
        return {"mode": orch.agent.mode, "enable_guardrails": settings.enable_guardrails,
                "guardrails_fail_mode": settings.guardrails_fail_mode,
                "enable_preprocessing": settings.enable_preprocessing, "prompt_version": settings.prompt_version,
                "llm_primary": settings.llm_primary_url, "llm_fallback": settings.llm_fallback_url,
                "tts_primary": settings.tts_primary_url, "tts_fallback": settings.tts_fallback_url,
                "rate_limit": settings.rate_limit, "rate_limit_storage": redact_url(settings.storage_uri()),
                "memory": orch.memory.describe()}

    deps = [Dependency("llm-primary", settings.llm_primary_url, required=False)]
    if settings.llm_fallback_url:
        deps.append(Dependency("llm-fallback", settings.llm_fallback_url, required=False))
    if settings.enable_guardrails:
        deps.append(Dependency("guardrails", settings.guardrails_url,
                               required=settings.guardrails_fail_mode == "closed"))
    deps += [Dependency("stt", settings.stt_url, required=False),
             Dependency("tts-primary", settings.tts_primary_url, required=False)]
    if settings.tts_fallback_url:
        deps.append(Dependency("tts-fallback", settings.tts_fallback_url, required=False))
    if settings.enable_preprocessing:
        deps.append(Dependency("audio-preprocessor", settings.preprocessor_url, required=False))
    app = create_service_app(settings, components=[orch.memory, PromptWarmer(orch.agent)], dependencies=deps,
                             routers=[router],
                             title="orchestrator-enhanced" if settings.enable_langchain else "orchestrator")
    install_rate_limit(app, limiter)
    app.state.orchestrator = orch
    app.state.limiter = limiter
    return app
