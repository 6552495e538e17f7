"""The agent: LangChain 1.x ``create_agent`` on the primary LLM with the fallback behind it (`FailoverMiddleware`),
the versioned system prompt and the tools; with ``ENABLE_LANGCHAIN=false`` the same graph without tools
(direct chat, the plain orchestrator).

`Agent.stream` runs one turn and yields, in order: `TextDelta` for each piece of answer text as the LLM streams
it, `ToolCalled` for each tool call that ran, and finally one `AgentAnswer`. `Agent.run` is the same without
the deltas.

What the user hears is exactly `AgentAnswer.text`, which always starts with the deltas streamed so far:

- every model step's text, in order (a step that also calls tools may say something first);
- then, for every tool that failed, its honest sentence (e.g. "Web search is not configured ...") when the model
  did not already say it, so a tool error is never silently lost;
- then, when the model said nothing at all, what the tools answered (they answer in speakable sentences), or an
  apology.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool

from services.common.errors import InvalidRequestError, ServiceError, UpstreamUnavailableError
from services.common.http import CircuitBreaker
from services.common.metrics import ORCH_TOOL_CALLS, service
from services.orchestrator_enhanced.llm import FailoverMiddleware
from services.orchestrator_enhanced.settings import Settings
from services.orchestrator_enhanced.turn import TurnContext

log = logging.getLogger(__name__)

NO_ANSWER = "Sorry, I don't have an answer for that."
"""Said when neither the model nor a tool produced any text."""


def load_system_prompt(settings: Settings) -> str:
    """The system prompt of ``PROMPT_VERSION`` (``prompts/<version>.md``); a clear error when it is missing."""
    path: Path = settings.prompt_file()
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        known = sorted(p.stem for p in settings.prompt_dir().glob("*.md"))
        raise ValueError(f"PROMPT_VERSION={settings.prompt_version!r}: no prompt file {path}; "
                         f"versions available: {', '.join(known) or 'none'}") from None
    if not text:
        raise ValueError(f"prompt file {path} is empty")
    return text


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass
class ToolCallRecord:
    name: str
    args: dict[str, Any]
    result: str
    ok: bool

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": self.args, "result": self.result, "ok": self.ok}


@dataclass(frozen=True)
class ToolCalled:
    call: ToolCallRecord


@dataclass
class AgentAnswer:
    text: str
    """Everything the assistant says this turn (see the module docstring)."""
    llm_engine: str | None
    """Model name of the LLM that produced the last model step (``llm-flan``, ``llm``), None if none ran."""
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    messages: list[BaseMessage] = field(default_factory=list)
    """The messages the turn added (AI steps and tool results), oldest first."""


AgentEvent = TextDelta | ToolCalled | AgentAnswer


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b if isinstance(b, str) else str(b.get("text", "")) for b in content
                       if isinstance(b, str) or b.get("type") == "text")
    return ""


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


class Agent:
    """One compiled LangChain agent graph, shared by every turn (it keeps no per-turn state)."""

    def __init__(self, settings: Settings, *, primary: BaseChatModel, fallback: BaseChatModel | None,
                 tools: Sequence[BaseTool], system_prompt: str) -> None:
        self.settings = settings
        self.tools = list(tools) if settings.enable_langchain else []
        self.system_prompt = system_prompt
        self.failover = FailoverMiddleware(
            primary, fallback, max_steps=settings.agent_max_steps, primary_timeout_s=settings.llm_primary_timeout_s,
            breaker=CircuitBreaker(f"llm:{settings.llm_primary_model}", settings.breaker_failure_threshold,
                                   settings.breaker_reset_s),
        )
        self.graph = create_agent(primary, self.tools, system_prompt=system_prompt, middleware=[self.failover],
                                  context_schema=TurnContext)

    async def _graph_stream(self, inputs: dict[str, Any], ctx: TurnContext) -> AsyncIterator[tuple[str, Any]]:
        """The graph's (mode, data) stream; a failure of both LLMs becomes a `ServiceError` (503)."""
        stream = self.graph.astream(inputs, context=ctx, stream_mode=["messages", "updates"])
        try:
            while True:
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    return
                except Exception as exc:  # noqa: BLE001 - mapped to the fleet's error shape
                    raise _no_llm(exc) from exc
                yield item
        finally:
            await stream.aclose()

    @property
    def mode(self) -> str:
        return "agent" if self.tools else "direct"

    async def run(self, text: str, history: Sequence[BaseMessage], ctx: TurnContext) -> AgentAnswer:
        answer = None
        async for event in self.stream(text, history, ctx):
            if isinstance(event, AgentAnswer):
                answer = event
        assert answer is not None
        return answer

    async def stream(self, text: str, history: Sequence[BaseMessage], ctx: TurnContext) -> AsyncIterator[AgentEvent]:
        if not text.strip():
            raise InvalidRequestError("the transcript is empty", param="transcript")
        said: list[str] = []  # text of each model step, as streamed
        step_text: dict[str, str] = {}  # message id -> streamed text of that step
        new_messages: list[BaseMessage] = []
        calls: list[ToolCallRecord] = []
        pending_args: dict[str, tuple[str, dict[str, Any]]] = {}
        engine: str | None = None
        inputs = {"messages": [*history, HumanMessage(text)]}
        async for mode, data in self._graph_stream(inputs, ctx):
            if mode == "messages":
                chunk, meta = data
                if isinstance(chunk, AIMessageChunk) and meta.get("langgraph_node") == "model":
                    delta = _text_of(chunk.content)
                    if delta:
                        step_text[chunk.id or ""] = step_text.get(chunk.id or "", "") + delta
                        yield TextDelta(delta)
                continue
            for update in (data or {}).values():
                for message in (update or {}).get("messages", []) if isinstance(update, dict) else []:
                    new_messages.append(message)
                    if isinstance(message, AIMessage):
                        engine = message.response_metadata.get("llm_engine", engine)
                        content = _text_of(message.content)
                        streamed = step_text.get(message.id or "", "")
                        if content and not streamed:  # a model that did not stream (or a scripted one)
                            yield TextDelta(content)
                        said.append(content or streamed)
                        for tc in message.tool_calls:
                            pending_args[tc.get("id") or ""] = (tc["name"], dict(tc.get("args") or {}))
                    elif isinstance(message, ToolMessage):
                        name, args = pending_args.get(message.tool_call_id, (message.name or "?", {}))
                        record = ToolCallRecord(name=name, args=args, result=_text_of(message.content),
                                                ok=message.status != "error")
                        calls.append(record)
                        ORCH_TOOL_CALLS.labels(service(), name, "ok" if record.ok else "error").inc()
                        yield ToolCalled(record)
        spoken = " ".join(s.strip() for s in said if s.strip())
        extra: list[str] = []
        for call in calls:
            if not call.ok and call.result and _norm(call.result) not in _norm(spoken):
                extra.append(call.result.strip())
        if not spoken and not extra:
            extra = [c.result.strip() for c in calls if c.ok and c.result.strip()] or [NO_ANSWER]
        if extra:
            addition = " ".join(extra)
            yield TextDelta((" " if spoken else "") + addition)
            spoken = f"{spoken} {addition}".strip()
        yield AgentAnswer(text=spoken, llm_engine=engine, tool_calls=calls, messages=new_messages)


def _no_llm(exc: Exception) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    return UpstreamUnavailableError(f"no LLM could answer: {type(exc).__name__}: {str(exc)[:300]}")


def describe_tools(tools: Sequence[BaseTool]) -> list[dict[str, Any]]:
    """Name, description and argument schema of each tool (GET /tools)."""
    out = []
    for t in tools:
        try:
            schema = t.tool_call_schema.model_json_schema()  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - a tool without a pydantic schema
            schema = {}
        out.append({"name": t.name, "description": t.description, "parameters": json.loads(json.dumps(schema))})
    return out
