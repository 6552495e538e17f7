"""OpenAI chat completions, shared by the fleet's LLM services (llm-flan, llm): wire types, the engine
protocol, and the routes ``POST /v1/chat/completions`` and ``GET /v1/models``.

A route validates the body (`ChatCompletionBody`, unknown fields are refused, never ignored), turns it into
a `ChatRequest`, lets the engine refuse what it cannot honour (`ChatEngine.validate`), and shapes the
engine's `ChatResult` (or its stream of `ChatDelta`) into OpenAI's JSON or server-sent events. Engines know
nothing about HTTP; the routes know nothing about models.

Streaming: the first event is produced before the response starts, so a request that fails early still
gets a proper status code; an error after that ends the stream with an ``error`` event (OpenAI's shape)
followed by ``[DONE]``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.common import context, metrics
from services.common.errors import EngineNotReadyError, NotFoundError, ServiceError

log = logging.getLogger(__name__)

MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 8


# --- wire types -----------------------------------------------------------------------------------------


class TextPart(BaseModel):
    """A text content part; the fleet's models read text only (image/audio parts are refused)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str = Field(description="JSON object, as a string (OpenAI's format).")


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One message. Extra keys OpenAI clients echo back on assistant messages (``refusal``, ``annotations``,
    ``audio``) carry nothing a text model uses, so they are accepted and dropped; everything that shapes the
    prompt is validated."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _role_rules(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id (the id of the assistant's tool call it answers)")
        if self.role != "tool" and self.tool_call_id:
            raise ValueError(f"tool_call_id belongs on tool messages, not on a {self.role} message")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"tool_calls belong on assistant messages, not on a {self.role} message")
        if self.role == "assistant":
            if self.content is None and not self.tool_calls:
                raise ValueError("an assistant message needs content or tool_calls")
        elif self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        return self

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("type", "object") != "object":
            raise ValueError("function parameters must be a JSON schema of type object")
        if not isinstance(v.get("properties", {}), dict):
            raise ValueError("function parameters.properties must be an object")
        return v


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class AllowedTools(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["auto", "required"] = "auto"
    tools: list[NamedToolChoice]


class AllowedToolsChoice(BaseModel):
    """OpenAI's ``{"type": "allowed_tools", "allowed_tools": {"mode", "tools": [{"type": "function",
    "function": {"name"}}]}}``: every tool stays in the prompt (so a prompt cache keeps it) but only these may
    be called; an empty list under ``auto`` lets the model only answer."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"] = Field(description="Only plain text is produced; json_object/json_schema are refused.")


class ChatCompletionBody(BaseModel):
    """OpenAI's chat completions body. Every accepted field is honoured; fields the fleet cannot honour are
    refused with 422 (unknown fields included), never silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Deprecated OpenAI name of max_completion_tokens.")
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy (deterministic).")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | AllowedToolsChoice | None = None
    parallel_tool_calls: bool | None = Field(None, description="At most one tool call is returned either way.")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    logprobs: Literal[False] | None = Field(None, description="Log probabilities are not returned.")
    user: str | None = Field(None, description="End-user id: logged, never used for generation.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionBody:
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream=true")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = [t.function.name for t in self.tools or []]
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not among the "
                                 f"tools ({', '.join(names)})")
        if isinstance(self.tool_choice, AllowedToolsChoice):
            names = [t.function.name for t in self.tools or []]
            allowed = self.tool_choice.allowed_tools
            unknown = [t.function.name for t in allowed.tools if t.function.name not in names]
            if unknown:
                raise ValueError(f"tool_choice.allowed_tools names {', '.join(map(repr, unknown))}, not among the "
                                 f"tools ({', '.join(names)})")
            if allowed.mode == "required" and not allowed.tools:
                raise ValueError("tool_choice.allowed_tools with mode required needs at least one tool")
        if self.tools:
            names = [t.function.name for t in self.tools]
            if len(set(names)) != len(names):
                raise ValueError("tool function names must be unique")
        return self


# --- engine side ------------------------------------------------------------------------------------------


@dataclass
class ChatRequest:
    """What an engine gets: the body with OpenAI's aliases resolved (``max_tokens`` = the effective
    completion cap, ``stop`` always a list, ``tool_choice`` resolved to "none"/"auto"/"required"/a name)."""

    messages: list[ChatMessage]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    tools: list[FunctionDef] = field(default_factory=list)
    tool_choice: str = "none"
    allowed: list[str] | None = None
    """Names of the tools the model may call (``allowed_tools``); None: every tool. The prompt shows all."""
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def callable_tools(self) -> list[FunctionDef]:
        """The tools the model may call: ``tools``, narrowed by ``allowed``."""
        return self.tools if self.allowed is None else [t for t in self.tools if t.name in self.allowed]

    @classmethod
    def from_body(cls, body: ChatCompletionBody) -> ChatRequest:
        tools = [t.function for t in body.tools or []]
        choice = body.tool_choice
        allowed = None
        if isinstance(choice, NamedToolChoice):
            resolved = choice.function.name
        elif isinstance(choice, AllowedToolsChoice):
            resolved = choice.allowed_tools.mode
            allowed = [t.function.name for t in choice.allowed_tools.tools]
        else:
            resolved = choice or ("auto" if tools else "none")
        return cls(
            messages=list(body.messages),
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            n=body.n,
            stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
            seed=body.seed,
            tools=tools if resolved != "none" else [],
            tool_choice=resolved,
            allowed=allowed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
        )


@dataclass
class Choice:
    index: int
    text: str | None
    finish_reason: Literal["stop", "length", "tool_calls"]
    tool_calls: list[ToolCall] | None = None


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass
class ChatResult:
    choices: list[Choice]
    usage: Usage
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (e.g. how many old messages were left out to fit the context)."""


@dataclass
class ChatDelta:
    """One streamed piece of choice ``index``: text, or a complete tool call, and/or the finish reason."""

    index: int
    text: str | None = None
    tool_calls: list[ToolCall] | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


@dataclass
class StreamStart:
    """First item of every stream: prompt size and response headers, before any text."""

    prompt_tokens: int
    headers: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class ChatEngine(Protocol):
    """A chat model behind the OpenAI routes. ``complete``/``stream`` keep blocking work off the event loop
    and bound their own concurrency (503 ``busy`` when full)."""

    name: str

    def model_ids(self) -> list[str]:
        """Names a request's ``model`` may use; the first is the model itself (reported in answers)."""
        ...

    async def start(self) -> None: ...

    def ready(self) -> bool: ...

    async def aclose(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def validate(self, req: ChatRequest) -> None:
        """Raise InvalidRequestError for what this engine cannot honour (cheap; no inference)."""
        ...

    async def complete(self, req: ChatRequest) -> ChatResult: ...

    def stream(self, req: ChatRequest) -> AsyncIterator[StreamStart | ChatDelta | Usage]:
        """StreamStart first, then deltas (per choice, in order, each choice ending with a finish_reason),
        then one Usage."""
        ...


def new_tool_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


# --- routes ---------------------------------------------------------------------------------------------


def _message(choice: Choice) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": None}
    if choice.tool_calls:
        msg["tool_calls"] = [tc.model_dump() for tc in choice.tool_calls]
    return msg


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def chat_router(engine: ChatEngine, *, owned_by: str) -> APIRouter:
    """``POST /v1/chat/completions``, ``GET /v1/models`` and ``GET /v1/models/{id}`` for ``engine``."""
    router = APIRouter()
    created = int(time.time())

    def model_card(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}

    def check_model(requested: str) -> str:
        ids = engine.model_ids()
        if requested not in ids:
            raise NotFoundError(f"model {requested!r} is not served here; available: {', '.join(ids)}",
                                param="model")
        return ids[0]

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(m) for m in engine.model_ids()]}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in engine.model_ids():
            raise NotFoundError(f"model {model_id!r} is not served here; available: {', '.join(engine.model_ids())}")
        return model_card(model_id)

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionBody, request: Request) -> JSONResponse | StreamingResponse:
        model = check_model(body.model)
        req = ChatRequest.from_body(body)
        engine.validate(req)
        if not engine.ready():
            raise EngineNotReadyError(f"{engine.name} is not ready: {engine.describe().get('status', 'loading')}",
                                      retry_after_s=5)
        completion_id = "chatcmpl-" + uuid.uuid4().hex
        now = int(time.time())
        if body.user:
            log.info("chat completion for user %s", body.user)
        if not body.stream:
            result = await engine.complete(req)
            _count_tokens(engine.name, result.usage)
            payload = {
                "id": completion_id, "object": "chat.completion", "created": now, "model": model,
                "choices": [{"index": c.index, "message": _message(c), "finish_reason": c.finish_reason,
                             "logprobs": None} for c in result.choices],
                "usage": result.usage.as_dict(),
                "system_fingerprint": None,
            }
            return JSONResponse(payload, headers=result.headers)

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = engine.stream(req)
        start = await anext(events)  # errors before this point are still status codes
        if not isinstance(start, StreamStart):
            raise TypeError(f"{engine.name}.stream must yield StreamStart first, got {type(start).__name__}")

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
            payload: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": now,
                                       "model": model, "system_fingerprint": None, "choices": choices}
            if include_usage:
                payload["usage"] = usage
            return _sse(payload)

        async def body_iter() -> AsyncIterator[bytes]:
            started: set[int] = set()
            try:
                async for event in events:
                    if isinstance(event, Usage):
                        _count_tokens(engine.name, event)
                        if include_usage:
                            yield chunk([], event.as_dict())
                        continue
                    assert isinstance(event, ChatDelta)
                    delta: dict[str, Any] = {}
                    if event.index not in started:
                        started.add(event.index)
                        delta["role"] = "assistant"
                        delta["content"] = "" if event.tool_calls is None else None
                    if event.text:
                        delta["content"] = event.text
                    if event.tool_calls:
                        delta["tool_calls"] = [{"index": i, **tc.model_dump()} for i, tc in enumerate(event.tool_calls)]
                    if delta or event.finish_reason:
                        yield chunk([{"index": event.index, "delta": delta, "logprobs": None,
                                      "finish_reason": event.finish_reason}])
            except ServiceError as exc:
                log.warning("stream ended by %s: %s", exc.code, exc.message)
                yield _sse(exc.body(context.get_correlation_id()))
            except Exception as exc:  # the status is already sent; end the stream with the error shape
                log.exception("stream failed")
                yield _sse(ServiceError(f"{engine.name} failed mid-stream: {type(exc).__name__}")
                           .body(context.get_correlation_id()))
            finally:
                close = getattr(events, "aclose", None)
                if close is not None:
                    await close()
            yield _sse("[DONE]")

        return StreamingResponse(body_iter(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **start.headers})

    return router


def _count_tokens(engine: str, usage: Usage) -> None:
    metrics.LLM_TOKENS.labels(metrics.service(), engine, "prompt").inc(usage.prompt_tokens)
    metrics.LLM_TOKENS.labels(metrics.service(), engine, "completion").inc(usage.completion_tokens)


# --- text helpers shared by engines ------------------------------------------------------------------------


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop sequence in ``text``, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def safe_prefix_len(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` can be streamed now: all but a tail that could still grow into a stop sequence."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return len(text) - keep

