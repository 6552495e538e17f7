"""Saved llama.cpp context states, so a prompt continues from the longest prefix any recent request evaluated.

llama.cpp by itself reuses only the prefix the *previous* request shared with the next. A voice fleet
alternates between prompts: another session's conversation, or the orchestrator's system prompt with and
without tool instructions. Re-evaluating ~400 prompt tokens costs 10-30 s on a 2-core CPU (Qwen2.5-Coder
1.5B evaluates ~15 prompt tokens/s per thread there), so one request in another shape cost a turn its
deadline. `PromptStates` keeps the context state (the used KV cells and the last logits: ~12-28 KB per
token for the bundled models, restored in a few ms) after each request, least recently used first out
within a byte budget (``LLM_PROMPT_CACHE_MB``), and before a request restores the one that shares the
longest prefix with its prompt when that beats what the context already holds.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llama_cpp import Llama

MIN_GAIN_TOKENS = 8
"""Restore only when it saves evaluating at least this many tokens (a restore costs a few ms)."""


def common_prefix(a: Any, b: Any) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PromptStates:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.items: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
        self.restores = 0

    def save(self, llm: Llama) -> None:
        """Keep ``llm``'s current state (the tokens it holds and their KV cells)."""
        if self.budget <= 0 or llm.n_tokens == 0:
            return
        key = tuple(int(t) for t in llm.input_ids[: llm.n_tokens])
        if key in self.items:
            self.items.move_to_end(key)
            return
        import llama_cpp

        ctx = llm._ctx.ctx
        size = llama_cpp.llama_state_get_size(ctx)
        if size > self.budget:
            return
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_get_data(ctx, buf, size)
        data = ctypes.string_at(buf, n)
        for old in [k for k in self.items if key[: len(k)] == k]:  # states this one extends are redundant
            self.used -= len(self.items.pop(old))
        self.items[key] = data
        self.used += len(data)
        while self.used > self.budget and self.items:
            _, dropped = self.items.popitem(last=False)
            self.used -= len(dropped)

    def restore(self, llm: Llama, tokens: list[int]) -> int:
        """Load the saved state sharing the longest prefix with ``tokens`` if that beats ``llm``'s own by
        `MIN_GAIN_TOKENS`; returns the prefix length now held that ``tokens`` share."""
        have = common_prefix(llm.input_ids[: llm.n_tokens], tokens)
        best, best_len = None, have
        for key in self.items:
            n = common_prefix(key, tokens)
            if n > best_len:
                best, best_len = key, n
        if best is None or best_len - have < MIN_GAIN_TOKENS:
            return have
        import llama_cpp

        data = self.items[best]
        self.items.move_to_end(best)
        src = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        llama_cpp.llama_state_set_data(llm._ctx.ctx, src, len(data))
        llm.n_tokens = len(best)
        llm.input_ids[: len(best)] = best
        self.restores += 1
        return best_len
