"""Test doubles of the orchestrator's LLMs that implement LangChain's real chat-model interface.

`ScriptedChatModel` is a ``BaseChatModel``: ``create_agent`` binds tools to it, calls it and streams it exactly
as it does ``ChatOpenAI``. It answers with a script of messages (text, or tool calls, or functions of the conversation), one per model call, and
records what it was asked (messages and the tools bound). Knobs: ``fail_with`` (an exception raised instead of
answering, ``fail_times`` times; None = always), ``delay_s`` (before answering), ``name`` (its reported model
name, as ``ChatOpenAI.model_name``).
"""

from __future__ import annotations

import asyncio
import json
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

_ids = itertools.count(1)


def say(text: str) -> AIMessage:
    """A scripted text answer."""
    return AIMessage(text)


def call_tool(name: str, **args: Any) -> AIMessage:
    """A scripted tool call."""
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"call_{next(_ids)}", "type": "tool_call"}])


class ScriptedChatModel(BaseChatModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    script: list[Any] = Field(default_factory=list)
    """Answers in order: a message, or a function of the messages the model was given (to answer from a tool
    result). When used up, the last one repeats (an empty script says "ok")."""
    model_name: str = "scripted"
    fail_with: BaseException | None = None
    fail_times: int | None = None
    delay_s: float = 0.0
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    bound_tools: list[list[str]] = Field(default_factory=list)
    tool_choices: list[Any] = Field(default_factory=list)
    """``tool_choice`` of each bind (an ``allowed_tools`` dict narrows what may be called)."""
    failures: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Any:
        names = [getattr(t, "name", None) or (t.get("name") if isinstance(t, dict) else str(t)) for t in tools]
        self.bound_tools.append(names)
        self.tool_choices.append(tool_choice)
        return self.bind(**kwargs) if kwargs else self

    def _next(self, messages: list[BaseMessage]) -> AIMessage:
        self.calls.append(list(messages))
        if self.fail_with is not None and (self.fail_times is None or self.failures < self.fail_times):
            self.failures += 1
            raise self.fail_with
        index = len(self.calls) - 1 - self.failures
        if not self.script:
            return AIMessage("ok")
        entry = self.script[min(index, len(self.script) - 1)]
        message = entry if isinstance(entry, AIMessage) else entry(list(messages))
        return message.model_copy(update={"id": f"scripted-{next(_ids)}"})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if self.delay_s:
            time.sleep(self.delay_s)
        return ChatResult(generations=[ChatGeneration(message=self._next(messages))])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return ChatResult(generations=[ChatGeneration(message=self._next(messages))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        raise NotImplementedError("use the async API")

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        message = self._next(messages)
        if message.tool_calls:
            chunk = AIMessageChunk(content="", id=message.id, tool_call_chunks=[
                {"name": tc["name"], "args": json.dumps(tc["args"]), "id": tc["id"], "index": i}
                for i, tc in enumerate(message.tool_calls)])
            yield ChatGenerationChunk(message=chunk)
            return
        words = str(message.content).split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            chunk = AIMessageChunk(content=piece, id=message.id)
            if run_manager is not None:
                await run_manager.on_llm_new_token(piece, chunk=ChatGenerationChunk(message=chunk))
            yield ChatGenerationChunk(message=chunk)
