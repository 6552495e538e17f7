"""Chat messages -> one FLAN-T5 instruction prompt, fitted to the encoder budget from the oldest turn.

FLAN-T5 is an instruction model without a chat template. A single user message (plus any system text) is
sent as the instruction itself, the form FLAN was tuned on. A conversation becomes a transcript:

    <system and developer text>

    User: ...
    Assistant: ...
    Assistant called get_weather({"city": "Paris"})
    Tool get_weather returned: 18 C, sunny
    User: <newest message>

    Reply as the assistant to the last message.

Fitting: the system text, the newest message and the closing instruction are always kept; older turns are
added newest-first while they fit ``max_input_tokens``, so the oldest are the ones left out (their count is
reported). If the kept parts alone do not fit, the request is refused (422) with the sizes: cutting the newest
message would answer a question nobody asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.common.errors import InvalidRequestError
from services.common.openai_chat import ChatMessage

CLOSING = "Reply as the assistant to the last message."
TOOL_RESULT_CLOSING = "Answer the user's last message using the tool results above."


@dataclass
class Prompt:
    text: str
    dropped_messages: int


def _tool_names(messages: list[ChatMessage]) -> dict[str, str]:
    return {tc.id: tc.function.name for m in messages for tc in (m.tool_calls or [])}


def render_turn(message: ChatMessage, tool_names: dict[str, str]) -> str:
    text = message.text.strip()
    if message.role == "user":
        return f"User ({message.name}): {text}" if message.name else f"User: {text}"
    if message.role == "assistant":
        parts = [f"Assistant: {text}"] if text else []
        for call in message.tool_calls or []:
            parts.append(f"Assistant called {call.function.name}({call.function.arguments})")
        return "\n".join(parts)
    if message.role == "tool":
        name = message.name or tool_names.get(message.tool_call_id or "", "a tool")
        return f"Tool {name} returned: {text}"
    raise ValueError(f"not a conversation turn: {message.role}")


def build_prompt(messages: list[ChatMessage], count_tokens: Callable[[str], int], max_input_tokens: int,
                 *, task: str | None = None) -> Prompt:
    """The prompt for ``messages`` within ``max_input_tokens``. ``task`` replaces the closing instruction
    (tool choice and argument questions reuse the same transcript)."""
    system = "\n".join(m.text.strip() for m in messages if m.role in ("system", "developer") and m.text.strip())
    turns = [m for m in messages if m.role not in ("system", "developer")]
    if not turns:
        raise InvalidRequestError("messages hold no user, assistant or tool message to answer", param="messages")
    names = _tool_names(messages)
    newest, older = turns[-1], turns[:-1]

    if not older and newest.role == "user" and task is None:  # a single instruction: FLAN's own format
        text = "\n\n".join(p for p in (system, newest.text.strip()) if p)
        size = count_tokens(text)
        if size > max_input_tokens:
            raise InvalidRequestError(
                f"the prompt is {size} tokens (system text and the last message), over the model's input limit of "
                f"{max_input_tokens} tokens (FLAN_T5_MAX_INPUT_TOKENS); shorten the last message", param="messages")
        return Prompt(text, 0)

    closing = task or (TOOL_RESULT_CLOSING if newest.role == "tool" else CLOSING)

    def assemble(kept: list[str]) -> str:
        head = f"{system}\n\n" if system else ""
        return f"{head}" + "\n".join(kept) + f"\n\n{closing}"

    rendered = [render_turn(m, names) for m in turns]
    kept = [rendered[-1]]
    base = count_tokens(assemble(kept))
    if base > max_input_tokens:
        raise InvalidRequestError(
            f"the prompt is {base} tokens without any earlier turn (system text, the last message and the "
            f"instruction), over the model's input limit of {max_input_tokens} tokens (FLAN_T5_MAX_INPUT_TOKENS); "
            "shorten the last message or the system text", param="messages")
    dropped = 0
    for i in range(len(rendered) - 2, -1, -1):
        candidate = [rendered[i], *kept]
        if count_tokens(assemble(candidate)) > max_input_tokens:
            dropped = i + 1  # this turn and every older one
            break
        kept = candidate
    return Prompt(assemble(kept), dropped)

