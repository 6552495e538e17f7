"""OpenAI ``tools`` for FLAN-T5, which has no native function calling: decided by prompting.

1. Which tool. Under ``tool_choice="auto"`` the candidates are the tools' names and ``none``; under
   ``"required"`` only the names; a named ``tool_choice`` skips this step. The conversation is followed by the
   tool list and FLAN's own multiple-choice form (``OPTIONS:\\n- a\\n- b``), and the model does not generate:
   each candidate is *scored* (mean token log-probability as the answer), so the choice is always one of the
   offered names. Under ``auto``, right after a tool result the model answers in text instead of choosing
   again (a small model would otherwise loop on its tool).
2. The arguments. For each *required* parameter of the chosen function's JSON schema, one question ("What value
   should <param> have?") with the parameter's description and type. ``enum`` and ``boolean`` parameters are
   answered by scoring their options, numbers and strings by short greedy generation that is then coerced to the
   schema type (a number that cannot be read becomes the schema default, else 0), arrays by JSON or a
   comma-separated list. Optional parameters are left out (the tool's defaults apply). All questions of one call
   go to the model together, so the batcher runs them as one batch.

Decisions are greedy and deterministic whatever the request's temperature.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from services.common.openai_chat import ChatMessage, FunctionCall, FunctionDef, ToolCall, new_tool_call_id

NONE = "none"
ARGUMENT_MAX_TOKENS = 32


@dataclass
class ToolCost:
    prompt_tokens: int = 0
    completion_tokens: int = 0


Score = Callable[[str, list[str]], Awaitable[list[float]]]
"""``score(prompt, candidates) -> mean log-probability per candidate`` (higher = more likely)."""
Generate = Callable[[str, int], Awaitable[tuple[str, int, int]]]
"""``generate(prompt, max_tokens) -> (text, prompt_tokens, completion_tokens)``, greedy."""
Transcript = Callable[[str], tuple[str, int]]
"""``transcript(task) -> (prompt, prompt_tokens)``: the fitted conversation followed by ``task``."""


@dataclass
class ToolDecision:
    call: ToolCall | None
    cost: ToolCost = field(default_factory=ToolCost)


def _options(names: list[str]) -> str:
    return "OPTIONS:\n" + "\n".join(f"- {n}" for n in names)


def selection_task(tools: list[FunctionDef], allow_none: bool) -> str:
    lines = [f"- {t.name}: {(t.description or t.name).strip()}" for t in tools]
    names = [t.name for t in tools] + ([NONE] if allow_none else [])
    ask = "Which tool should be called to answer the last message?"
    if allow_none:
        ask += " If no tool fits, answer none."
    return "Tools:\n" + "\n".join(lines) + f"\n\n{ask}\n{_options(names)}"


def _schema_type(schema: dict[str, Any]) -> str:
    t = schema.get("type", "string")
    if isinstance(t, list):  # e.g. ["string", "null"]
        t = next((x for x in t if x != "null"), "string")
    if "enum" in schema:
        return "enum"
    return str(t)


def argument_task(tool: FunctionDef, name: str, schema: dict[str, Any]) -> str:
    about = (tool.description or "").strip()
    kind = _schema_type(schema)
    desc = (schema.get("description") or "").strip()
    head = f"The tool {tool.name}" + (f" ({about})" if about else "") + " will be called for the last message."
    param = f"Parameter {name}" + (f": {desc}" if desc else "") + f" (type {kind if kind != 'enum' else 'choice'})."
    task = f"{head}\n{param}\nWhat value should {name} have? Answer with the value only."
    if kind == "enum":
        task += "\n" + _options([str(v) for v in schema["enum"]])
    elif kind == "boolean":
        task += "\n" + _options(["yes", "no"])
    return task


_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")
_WORD_NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}


def coerce(text: str, schema: dict[str, Any]) -> Any:
    """The generated answer as a value of the schema's type."""
    kind = _schema_type(schema)
    text = text.strip().strip("\"'`").strip()
    if kind in ("integer", "number"):
        m = _NUMBER.search(text)
        if m:
            value = float(m.group().replace(",", "."))
        elif text.lower() in _WORD_NUMBERS:
            value = float(_WORD_NUMBERS[text.lower()])
        else:
            value = float(schema.get("default", 0))
        return int(round(value)) if kind == "integer" else value
    if kind == "array":
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list):
                return parsed
        except ValueError:
            pass
        items = [x.strip() for x in re.split(r",|\band\b", text) if x.strip()]
        item_schema = schema.get("items") or {"type": "string"}
        return [coerce(x, item_schema) for x in items]
    if kind == "object":
        try:
            parsed = json.loads(text)
            return parsed if isinstance(parsed, dict) else {}
        except ValueError:
            return {}
    return text


class ToolCaller:
    def __init__(self, score: Score, generate: Generate, count_tokens: Callable[[str], int]):
        self.score = score
        self.generate = generate
        self.count_tokens = count_tokens

    async def decide(self, tools: list[FunctionDef], tool_choice: str, messages: list[ChatMessage],
                     transcript: Transcript) -> ToolDecision:
        cost = ToolCost()
        by_name = {t.name: t for t in tools}
        if tool_choice in by_name:
            chosen = by_name[tool_choice]
        else:
            allow_none = tool_choice == "auto"
            last = next((m for m in reversed(messages) if m.role not in ("system", "developer")), None)
            if allow_none and last is not None and last.role == "tool":
                return ToolDecision(None, cost)
            prompt, size = transcript(selection_task(tools, allow_none))
            names = [t.name for t in tools] + ([NONE] if allow_none else [])
            scores = await self.score(prompt, names)
            cost.prompt_tokens += size
            best = max(range(len(names)), key=lambda i: scores[i])
            if names[best] == NONE:
                return ToolDecision(None, cost)
            chosen = by_name[names[best]]
        arguments = await self.arguments(chosen, transcript, cost)
        call = ToolCall(id=new_tool_call_id(), function=FunctionCall(
            name=chosen.name, arguments=json.dumps(arguments, ensure_ascii=False)))
        return ToolDecision(call, cost)

    async def arguments(self, tool: FunctionDef, transcript: Transcript, cost: ToolCost) -> dict[str, Any]:
        props: dict[str, Any] = tool.parameters.get("properties", {}) or {}
        required = [r for r in tool.parameters.get("required", []) or [] if r in props]

        async def one(name: str) -> Any:
            schema = props[name] if isinstance(props[name], dict) else {}
            prompt, size = transcript(argument_task(tool, name, schema))
            cost.prompt_tokens += size
            kind = _schema_type(schema)
            if kind in ("enum", "boolean"):
                options = [str(v) for v in schema["enum"]] if kind == "enum" else ["yes", "no"]
                scores = await self.score(prompt, options)
                best = max(range(len(options)), key=lambda i: scores[i])
                if kind == "boolean":
                    return best == 0
                return schema["enum"][best]
            text, _, generated = await self.generate(prompt, ARGUMENT_MAX_TOKENS)
            cost.completion_tokens += generated
            return coerce(text, schema)

        values = await asyncio.gather(*(one(name) for name in required))
        return dict(zip(required, values))


def finite(scores: list[float]) -> list[float]:
    return [s if math.isfinite(s) else -1e30 for s in scores]
