"""The agent: LangChain 1.x ``create_agent`` on the primary LLM with the fallback behind it (`FailoverMiddleware`),
the versioned system prompt and the tools; with ``ENABLE_LANGCHAIN=false`` the same graph without tools
(direct chat, the plain orchestrator).

`Agent.stream` runs one turn and yields, in order: `TextDelta` for each piece of answer text as the LLM streams
it, `ToolCalled` for each tool call that ran, and finally one `AgentAnswer`. `Agent.run` is the same without
the deltas.

Before the LLM, `services.orchestrator_enhanced.intents.match` may recognise the request as a local intent
(time, date, arithmetic, a unit conversion, a calculation on the previous answer, thanks, "what can you do?",
something it cannot do): the tool, if any, runs at once, no model is asked (``llm_engine`` is
``local-intent``), and the turn otherwise looks like one where the model called that tool.

What the user hears is exactly `AgentAnswer.text`, the concatenation of the deltas, which pass through a
`SpokenFilter` (complete sentences, each said once, no tool syntax, no markdown):

- every model step's text, in order (a step that also calls tools may say something first);
- then, for every tool that failed, its honest sentence (e.g. "I couldn't reach Discord just now ...") unless it
  was already said, so a tool error is never silently lost;
- then, when the model said nothing that may be read out, what the tools answered (they answer in speakable
  sentences), or an apology.

The system prompt template (``prompts/<PROMPT_VERSION>.md``) is filled in with what the offered tools are for
(``{tools}``) and what the assistant cannot do here (``{cannot}``): no web search without SearchWeb, no
messages without SendDiscordMessage, never timers, devices, music or calls.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool

from services.common.errors import InvalidRequestError, ServiceError, UpstreamUnavailableError
from services.common.http import CircuitBreaker
from services.common.metrics import ORCH_TOOL_CALLS, service
from services.orchestrator_enhanced import intents
from services.orchestrator_enhanced.llm import FailoverMiddleware, allowed_tools
from services.orchestrator_enhanced.settings import Settings
from services.orchestrator_enhanced.spoken import SpokenFilter
from services.orchestrator_enhanced.turn import TurnContext

log = logging.getLogger(__name__)

NO_ANSWER = "Sorry, I don't have an answer for that."
"""Said when neither the model nor a tool produced any text."""

LOCAL_ENGINE = "local-intent"
"""``llm_engine`` of a turn answered by a local intent (no LLM asked)."""

TOOL_USES = {
    "GetCurrentTime": "GetCurrentTime for the current time, day or date",
    "Calculator": "Calculator for arithmetic",
    "SearchWeb": "SearchWeb for news, weather, prices and facts that change",
    "SendDiscordMessage": "SendDiscordMessage to post a message when the user asks you to send one",
}
ALWAYS_CANNOT = ["set timers, alarms or reminders", "control lights or other devices", "play music or videos",
                 "make phone calls"]


def _spoken_list(items: Sequence[str], last: str = "and") -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])}, {last} {items[-1]}"


def render_prompt(template: str, tools: Sequence[BaseTool]) -> str:
    """The system prompt template with ``{tools}`` (what each offered tool is for) and ``{cannot}`` (what the
    assistant cannot do with these tools) filled in; a template without them is used as it is."""
    names = [t.name for t in tools]
    uses = [TOOL_USES.get(name, name) for name in names]
    tools_line = f"Use {_spoken_list(uses)}." if uses else "You have no tools: answer from your own knowledge."
    cannot = list(ALWAYS_CANNOT)
    if "SearchWeb" not in names:
        cannot.append("look anything up on the internet (no news, weather or prices)")
    if "SendDiscordMessage" not in names:
        cannot.append("send messages")
    return template.replace("{tools}", tools_line).replace("{cannot}", _spoken_list(cannot, "or"))


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
    """One or more complete sentences (or the answer's opening clause), never half of one: speakable as is."""


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


class ToolSelection(AgentMiddleware):
    """Lets the model call only the tools the turn's request may need (`intents.offered`, ``TOOL_SELECTION=
    relevant``): a small model that may call GetCurrentTime calls it for "the capital of France". The request
    is the turn's last human message, so every step of a turn allows the same tools. Every tool stays in the
    prompt (OpenAI's ``allowed_tools`` tool choice), so the LLM server's prompt cache holds across turns."""

    @property
    def name(self) -> str:
        return "ToolSelection"

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        raise NotImplementedError("the orchestrator runs its agent asynchronously (ainvoke/astream)")

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse | AIMessage:
        if not request.tools:
            return await handler(request)
        if isinstance(request.tool_choice, dict):  # already narrowed (the step limit)
            return await handler(request)
        said = next((_text_of(m.content) for m in reversed(request.messages) if isinstance(m, HumanMessage)), "")
        names = [getattr(t, "name", "") for t in request.tools]
        keep = intents.offered(said, names)
        if len(keep) == len(names):
            return await handler(request)
        return await handler(request.override(tool_choice=allowed_tools(keep)))


class Agent:
    """One compiled LangChain agent graph, shared by every turn (it keeps no per-turn state)."""

    def __init__(self, settings: Settings, *, primary: BaseChatModel, fallback: BaseChatModel | None,
                 tools: Sequence[BaseTool], system_prompt: str) -> None:
        self.settings = settings
        self.tools = list(tools) if settings.enable_langchain else []
        self.local_tools = {t.name: t for t in tools}
        """Tools local intents may run, in either mode."""
        self.system_prompt = render_prompt(system_prompt, self.tools)
        self.failover = FailoverMiddleware(
            primary, fallback, max_steps=settings.agent_max_steps, primary_timeout_s=settings.llm_primary_timeout_s,
            breaker=CircuitBreaker(f"llm:{settings.llm_primary_model}", settings.breaker_failure_threshold,
                                   settings.breaker_reset_s),
        )
        middleware: list[AgentMiddleware] = [self.failover]
        if settings.tool_selection == "relevant":
            middleware.insert(0, ToolSelection())
        self.graph = create_agent(primary, self.tools, system_prompt=self.system_prompt, middleware=middleware,
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
        if self.settings.local_intents:
            previous = next((_text_of(m.content) for m in reversed(history) if isinstance(m, AIMessage)), None)
            intent = intents.match(text, {t.name for t in self.tools}, previous)
            if intent is not None and (intent.tool is None or intent.tool in self.local_tools):
                async for event in self._local(intent):
                    yield event
                return
        spoken = SpokenFilter()
        new_messages: list[BaseMessage] = []
        calls: list[ToolCallRecord] = []
        pending_args: dict[str, tuple[str, dict[str, Any]]] = {}
        streamed_ids: set[str] = set()
        engine: str | None = None
        inputs = {"messages": [*history, HumanMessage(text)]}
        async for mode, data in self._graph_stream(inputs, ctx):
            if mode == "messages":
                chunk, meta = data
                if isinstance(chunk, AIMessageChunk) and meta.get("langgraph_node") == "model":
                    delta = _text_of(chunk.content)
                    if delta:
                        streamed_ids.add(chunk.id or "")
                        if out := spoken.feed(delta):
                            yield TextDelta(out)
                continue
            for update in (data or {}).values():
                for message in (update or {}).get("messages", []) if isinstance(update, dict) else []:
                    new_messages.append(message)
                    if isinstance(message, AIMessage):
                        engine = message.response_metadata.get("llm_engine", engine)
                        content = _text_of(message.content)
                        if content and (message.id or "") not in streamed_ids:  # a model that did not stream
                            spoken.feed(content)
                        if out := spoken.flush():  # the step is over: its last words are complete
                            yield TextDelta(out)
                        for tc in message.tool_calls:
                            pending_args[tc.get("id") or ""] = (tc["name"], dict(tc.get("args") or {}))
                    elif isinstance(message, ToolMessage):
                        name, args = pending_args.get(message.tool_call_id, (message.name or "?", {}))
                        record = ToolCallRecord(name=name, args=args, result=_text_of(message.content),
                                                ok=message.status != "error")
                        calls.append(record)
                        ORCH_TOOL_CALLS.labels(service(), name, "ok" if record.ok else "error").inc()
                        yield ToolCalled(record)
        if out := spoken.flush():
            yield TextDelta(out)
        said_any = bool(spoken.text)
        for call in calls:  # a failure is never silently lost (said once: the filter drops a repeat)
            if not call.ok and call.result.strip() and (out := spoken.add(call.result.strip())):
                yield TextDelta(out)
        if not said_any and not spoken.text:
            for call in calls:
                if call.ok and call.result.strip() and (out := spoken.add(call.result.strip())):
                    yield TextDelta(out)
            if not spoken.text:
                yield TextDelta(spoken.add(NO_ANSWER))
        if spoken.dropped:
            log.info("not read out: %s", "; ".join(f"{why}: {what[:80]!r}" for why, what in spoken.dropped))
        yield AgentAnswer(text=spoken.text, llm_engine=engine, tool_calls=calls, messages=new_messages)

    async def _local(self, intent: intents.Intent) -> AsyncIterator[AgentEvent]:
        """A local intent's turn: its tool's answer (or the answer computed by the intent), no LLM."""
        if intent.tool is None:  # small talk, or something the assistant cannot do: no tool ran
            spoken = SpokenFilter()
            yield TextDelta(spoken.add(intent.answer or NO_ANSWER))
            log.info("local intent without a tool (small talk or cannot do), answered without the LLM")
            yield AgentAnswer(text=spoken.text, llm_engine=LOCAL_ENGINE, messages=[AIMessage(spoken.text)])
            return
        if intent.answer is not None:
            record = ToolCallRecord(name=intent.tool, args=intent.args, result=intent.answer, ok=True)
        else:
            call_id = f"local-{uuid.uuid4().hex[:12]}"
            message = await self.local_tools[intent.tool].ainvoke(
                {"type": "tool_call", "name": intent.tool, "args": intent.args, "id": call_id})
            record = ToolCallRecord(name=intent.tool, args=intent.args, result=_text_of(message.content),
                                    ok=message.status != "error")
        ORCH_TOOL_CALLS.labels(service(), record.name, "ok" if record.ok else "error").inc()
        yield ToolCalled(record)
        spoken = SpokenFilter()
        yield TextDelta(spoken.add(record.result or NO_ANSWER))
        log.info("local intent %s answered without the LLM", intent.tool, extra={"tool": intent.tool})
        yield AgentAnswer(text=spoken.text, llm_engine=LOCAL_ENGINE, tool_calls=[record],
                          messages=[AIMessage(spoken.text)])


class PromptWarmer:
    """A component that, at start, has each LLM server evaluate the agent's system prompt and tools once
    (a few tokens of answer to "Hello"), so the first user's turn does not pay for it: ~500 prompt tokens are
    40-60 s on a 2-core CPU, past a turn's deadline. The server keeps that prefix (llm's prompt cache and
    saved states) for every later turn. Only real OpenAI-compatible servers are warmed (not scripted models);
    a server that is down or still loading is retried for ``WARM_UP_FOR_S``. Never gates readiness."""

    name = "llm-prompt-warm-up"
    WARM_UP_TOKENS = 8  # llm writes the "message:" header of an answer without evaluating; a few tokens of answer do
    RETRY_S = 5.0
    WARM_UP_FOR_S = 900.0

    def __init__(self, agent: Agent) -> None:
        from langchain_openai import ChatOpenAI

        self.agent = agent
        models = [agent.failover.fallback, agent.failover.primary]
        self.models = [m for m in models if isinstance(m, ChatOpenAI)]
        self.warmed: list[str] = []

    async def start(self) -> None:
        import asyncio

        from langchain_core.messages import SystemMessage

        from services.orchestrator_enhanced.llm import model_label

        async def warm(model: BaseChatModel) -> None:
            bound: Any = model.bind_tools(self.agent.tools, tool_choice=allowed_tools([])) if self.agent.tools else model
            loop = asyncio.get_running_loop()
            give_up = loop.time() + self.WARM_UP_FOR_S
            while True:
                try:
                    await bound.ainvoke([SystemMessage(self.agent.system_prompt), HumanMessage("Hello")],
                                        max_completion_tokens=self.WARM_UP_TOKENS)
                except Exception as exc:  # noqa: BLE001 - a server not there yet: try again
                    if loop.time() > give_up:
                        log.info("no prompt warm-up for %s: %s", model_label(model), exc)
                        return
                    await asyncio.sleep(self.RETRY_S)
                    continue
                self.warmed.append(model_label(model))
                log.info("prompt warmed up on %s", model_label(model))
                return

        await asyncio.gather(*(warm(m) for m in self.models))

    def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"warmed": list(self.warmed)}


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
