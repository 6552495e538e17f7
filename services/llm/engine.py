"""Model layer of the llm service: a GGUF chat model on llama.cpp (llama-cpp-python) as a `ChatEngine`.

No HTTP here: `services.common.openai_chat.chat_router` validates the body, builds a `ChatRequest`, calls
`LlamaCppEngine.validate` on the event loop (cheap, pure Python) and then `complete` or `stream`, which
run every llama.cpp call (tokenizing included) in the engine's `InferenceRunner`, one generation at a time.

How a request becomes tokens:

- Messages are rendered with the model's own chat template (``tokenizer.chat_template`` in the GGUF; ChatML
  for SmolLM2, which adds its default system prompt when the first message is not a system message).
  ``developer`` becomes ``system``. Tool definitions, assistant tool calls and tool results are written
  in the text convention of llama-cpp-python's ``chatml-function-calling`` handler (see `tool_instructions`).
- If prompt + ``max_tokens`` exceeds ``LLM_N_CTX``, the oldest non-system messages are dropped (with the
  tool results of a dropped tool call), never a system message and never the newest message; the count is
  sent as ``X-Context-Truncated-Messages``. If the system messages and the newest message alone do not
  fit, the request is refused (422) with the sizes.

Sampling is OpenAI's: ``temperature`` (0 = greedy) and ``top_p`` only (llama.cpp's top-k, min-p and repeat
penalty are switched off), ``presence_penalty``/``frequency_penalty`` over every generated token, ``seed``
(choice ``i`` of ``n`` uses ``seed + i``). llama.cpp has no ``n``: the choices are generated one after the
other. Each choice evaluates its prompt afresh, never from the KV cache of an earlier generation: a cache
hit evaluates the tail in another batch shape, which moves logits in the last bits and can change greedy
picks, so identical requests would not always get identical answers.

Tool calls are grammar-constrained (llama.cpp GBNF, built from each function's JSON schema by
llama-cpp-python's ``json_schema_to_gbnf``), so arguments are always JSON matching the schema (unless
``max_tokens`` cuts them: finish_reason ``length``). A named ``tool_choice`` appends
``functions.<name>:`` to the prompt and generates the arguments under that function's grammar;
``required`` first lets a grammar pick one of ``functions.<name>:``; ``auto`` also allows ``message:``,
after which the answer is free text. At most one tool call per choice.
"""

from __future__ import annotations

import codecs
import functools
import json
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from services.common.errors import (
    EngineFailedError,
    EngineNotReadyError,
    InvalidRequestError,
)
from services.common.inference import InferenceRunner, load_in_thread
from services.common.logging import configure_logging
from services.common.openai_chat import (
    ChatDelta,
    ChatMessage,
    ChatRequest,
    ChatResult,
    Choice,
    FunctionCall,
    FunctionDef,
    StreamStart,
    ToolCall,
    Usage,
    find_stop,
    new_tool_call_id,
    safe_prefix_len,
)
from services.llm.models import BUNDLED, materialize, parts
from services.llm.settings import Settings
from services.llm.states import PromptStates
from services.llm.worker import ChildDied, ChildObject, describe_exit

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar

log = logging.getLogger(__name__)

ALIAS = "llm"
"""Model name every deployment answers to, whatever GGUF it serves."""

TRUNCATED_HEADER = "X-Context-Truncated-Messages"

SYSTEM_ROLES = frozenset({"system", "developer"})
MESSAGE_HEADER = "message:\n"
FUNCTION_PREFIX = "functions."

SEED_MODULUS = 2**32 - 1
"""Seeds are taken modulo this: 0xFFFFFFFF is llama.cpp's "pick a random seed"."""

# ChatML, for a GGUF without a chat template (SmolLM2 has one).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Finish = Literal["stop", "length", "tool_calls"]


def _cgroup_cpu_limit() -> int | None:
    """CPUs granted by a cgroup CPU quota (v2 ``cpu.max``, else v1 ``cfs_quota_us``), None when unlimited."""
    root = Path("/sys/fs/cgroup")
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return math.ceil(quota_us / period_us) if quota_us > 0 and period_us > 0 else None  # -1: no quota


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (a container's ``cpus:``
    limit, which the affinity mask does not show). llama.cpp threads beyond it only contend."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(cpus, limit) if limit else cpus)


def default_threads() -> int:
    """Threads for ``LLM_N_THREADS=0``: half the available CPUs, at least one (llama-cpp-python's rule).

    llama.cpp's threads wait for each other at every layer by spinning, so when another process takes a
    core the whole generation stalls: on 2 CPUs shared with a busy process, 32 tokens took 28-112 s with
    2 threads and 1 s with 1 thread (2 threads are twice as fast only while nothing else runs)."""
    return max(1, available_cpus() // 2)


# --- prompt text (pure functions) -----------------------------------------------------------------------


def tool_instructions(tools: Sequence[FunctionDef], mode: str) -> str:
    """System-prompt text describing ``tools`` in the ``chatml-function-calling`` convention of
    llama-cpp-python: ``functions.<name>:`` then a JSON object of arguments; ``message:`` then text."""
    lines = ["You have access to the following functions:", ""]
    for fn in tools:
        lines.append(f"{FUNCTION_PREFIX}{fn.name}:")
        if fn.description:
            lines.append(f"// {fn.description}")
        lines.append(json.dumps(fn.parameters, ensure_ascii=False))
        lines.append("")
    call_format = [f"{FUNCTION_PREFIX}<function_name>:", '{ "arg1": "value1", "arg2": "value2" }']
    if mode == "auto":
        lines += ["You can respond to users messages with either a single message or a function call.", "",
                  "To respond with a message begin the message with 'message:', use the following format:", "",
                  "message:", "<message>", "",
                  "To respond with a function call begin the message with 'functions.<function_name>:', "
                  "use the following format:", "", *call_format]
    elif mode == "required":
        lines += ["Respond with a function call: begin the message with 'functions.<function_name>:', "
                  "use the following format:", "", *call_format]
    else:  # a named function
        lines += [f"Respond by calling {FUNCTION_PREFIX}{mode} in the following format:", "",
                  f"{FUNCTION_PREFIX}{mode}:", '{ "arg1": "value1", "arg2": "value2" }']
    return "\n".join(lines)


def template_messages(messages: Sequence[ChatMessage], tools: Sequence[FunctionDef], mode: str) -> list[dict[str, str]]:
    """The messages as the chat template receives them: ``{"role", "content"}`` with text content.

    ``developer`` -> ``system``; an assistant's tool calls are written ``functions.<name>:\\n<arguments>``
    (after its text, which is prefixed with ``message:`` while tools are offered, as the model is asked
    to answer); a tool result is a ``tool`` turn ``functions.<name> returned:\\n<content>``. With tools,
    their description is appended to the first system message (or becomes one)."""
    call_names = {tc.id: tc.function.name for m in messages for tc in (m.tool_calls or [])}
    out: list[dict[str, str]] = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        if role == "assistant":
            parts = [(MESSAGE_HEADER if tools else "") + m.text] if m.text else []
            parts += [f"{FUNCTION_PREFIX}{tc.function.name}:\n{tc.function.arguments}" for tc in m.tool_calls or []]
            content = "\n".join(parts)
        elif role == "tool":
            name = call_names.get(m.tool_call_id or "") or m.name or "function"
            content = f"{FUNCTION_PREFIX}{name} returned:\n{m.text}"
        else:
            content = m.text
        out.append({"role": role, "content": content})
    if tools:
        text = tool_instructions(tools, mode)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def arguments_gbnf(fn: FunctionDef) -> str:
    """GBNF grammar of ``fn``'s arguments (compact JSON matching its parameters schema)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json.dumps(fn.parameters))
    except Exception as exc:
        raise InvalidRequestError(
            f"tools: the parameters schema of {fn.name!r} cannot be turned into a grammar ({type(exc).__name__}: "
            f"{exc}); use plain JSON schema (object properties, required, string/number/integer/boolean/array, "
            "enum, local $ref)", param="tools") from None


def header_gbnf(tools: Sequence[FunctionDef], mode: str) -> tuple[str, list[str]]:
    """Grammar that picks ``functions.<name>:`` (``required``) or that or ``message:`` (``auto``), and the
    complete headers it accepts. ``tools`` are the callable ones (``allowed_tools`` narrows them; the prompt
    still shows every tool, so its KV cache survives a change of what is allowed). Names match
    ``[A-Za-z0-9_-]+`` (checked by the body), safe in GBNF."""
    names = " | ".join(f'"{fn.name}"' for fn in tools)
    alternatives = [f'"{FUNCTION_PREFIX}" ({names}) ":\\n"'] if tools else []  # none callable: answer only
    headers = [f"{FUNCTION_PREFIX}{fn.name}:\n" for fn in tools]
    if mode == "auto":
        alternatives.insert(0, '"message:\\n"')
        headers.insert(0, MESSAGE_HEADER)
    return "root ::= " + " | ".join(alternatives) + "\n", headers


def choice_seed(seed: int | None, index: int, temperature: float) -> int:
    """Sampler seed of choice ``index``: ``seed + index`` when the request has a seed, fixed at
    temperature 0 (greedy needs none), else random."""
    if seed is not None:
        return (seed + index) % SEED_MODULUS
    if temperature == 0:
        return 0
    return random.SystemRandom().randrange(SEED_MODULUS)


def assemble(events: Sequence[StreamStart | ChatDelta | Usage]) -> ChatResult:
    """A `ChatResult` from the complete event stream of one request (what `complete` returns)."""
    start, usage = events[0], events[-1]
    assert isinstance(start, StreamStart) and isinstance(usage, Usage)
    texts: dict[int, list[str]] = {}
    calls: dict[int, list[ToolCall]] = {}
    finish: dict[int, Finish] = {}
    for ev in events[1:-1]:
        assert isinstance(ev, ChatDelta)
        texts.setdefault(ev.index, [])
        if ev.text:
            texts[ev.index].append(ev.text)
        if ev.tool_calls:
            calls.setdefault(ev.index, []).extend(ev.tool_calls)
        if ev.finish_reason:
            finish[ev.index] = ev.finish_reason
    choices = [
        Choice(index=i, text=None if i in calls and not texts[i] else "".join(texts[i]),
               finish_reason=finish[i], tool_calls=calls.get(i))
        for i in sorted(texts)
    ]
    return ChatResult(choices=choices, usage=usage, headers=dict(start.headers))


# --- engine -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """A rendered, tokenized prompt that fits the context with room for ``max_tokens``."""

    text: str
    tokens: list[int]
    dropped: int
    """Oldest messages left out to fit the context window."""


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    seed: int


@dataclass
class _Run:
    """Outcome of one sampling pass."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish: Literal["stop", "length"] = "stop"


def _drain(gen: Generator[str, None, _Run]) -> _Run:
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _deltas(index: int, gen: Generator[str, None, _Run], *, lstrip: bool = False) -> Generator[ChatDelta, None, _Run]:
    """Text pieces of ``gen`` as deltas of choice ``index``; ``lstrip`` drops leading whitespace."""
    leading = lstrip
    while True:
        try:
            piece = next(gen)
        except StopIteration as stop:
            run: _Run = stop.value
            if lstrip:
                run.text = run.text.lstrip()
            return run
        if leading:
            piece = piece.lstrip()
            if not piece:
                continue
            leading = False
        yield ChatDelta(index=index, text=piece)


def model_id(settings: Settings) -> str:
    """The model id the configured GGUF is served under (its file stem, or the bundled model's name). Cheap:
    checks that the file or the bundled model's packages exist, joins nothing; ValueError when they do not."""
    if settings.llm_model_path is None:
        bundled = BUNDLED[settings.llm_bundled_model]
        parts(bundled)
        return bundled.model_id
    path = settings.llm_model_path.expanduser()
    if path.suffix.lower() != ".gguf":
        raise ValueError(f"LLM_MODEL_PATH={str(settings.llm_model_path)!r} is not a .gguf file")
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    return path.stem


def resolve_model(settings: Settings) -> tuple[Path, str]:
    """BLOCKING: the GGUF to serve and its model id; a bundled model in chunks is joined and verified first
    (`services.llm.models.materialize`, seconds, once)."""
    name = model_id(settings)
    if settings.llm_model_path is None:
        return materialize(BUNDLED[settings.llm_bundled_model], settings.models_dir()), name
    return settings.llm_model_path.expanduser(), name


def backend_info(system_info: str, load_log: str, *, extra_buffer_types: bool, load_s: float) -> dict[str, Any]:
    """What llama.cpp runs on, from its system info (``CPU : SSE3 = 1 | AVX = 1 | ...``) and its load log
    (``CPU_Mapped model buffer size = 98.00 MiB``): the CPU features compiled in, and each buffer the
    weights, KV cache and compute graph went into (an ``AMX`` or ``CPU_REPACK`` buffer means extra buffer
    types are in use)."""
    features = [name.split(":")[-1].strip() for name, _, on in (part.partition("=") for part in system_info.split("|"))
                if on.strip() == "1"]
    buffers = {f"{kind} {what}": size for kind, what, size in
               re.findall(r"(\S+) (model|KV|compute) buffer size\s*=\s*([\d.]+ MiB)", load_log)}
    return {"cpu_features": features, "buffers": buffers, "extra_buffer_types": extra_buffer_types,
            "load_s": round(load_s, 3)}


class LlamaCore:
    """The model itself, on llama-cpp-python: one ``Llama`` (one context) serving one generation at a time.
    It lives in the llm service's child process (`LlamaCppEngine` starts it there); every method is blocking."""

    def __init__(self, settings: Settings) -> None:
        self.model_path, self.model_id = resolve_model(settings)
        self.n_ctx = settings.llm_n_ctx
        self.n_threads = settings.llm_n_threads or default_threads()
        self.max_tokens = settings.llm_max_tokens
        self.default_temperature = settings.llm_temperature
        self.default_top_p = settings.llm_top_p
        self.prompt_cache = settings.llm_prompt_cache
        self.states = PromptStates(settings.llm_prompt_cache_mb * 1024 * 1024 if settings.llm_prompt_cache else 0)
        self.extra_buffer_types = settings.llm_extra_buffer_types
        self._llm: Llama | None = None
        self._formatter: Any = None
        self._vocab: Any = None
        self._add_bos = False
        self._bos_text = ""
        self.resets = 0

    # -- lifecycle

    def load(self) -> dict[str, Any]:
        """Load the model; returns what llama.cpp runs on (`backend_info`)."""
        self._llm, backend = self._load()
        return backend

    def _load(self) -> tuple[Llama, dict[str, Any]]:
        import llama_cpp
        import llama_cpp.llama_cpp as capi
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        t0 = time.perf_counter()
        lines: list[str] = []

        @capi.llama_log_callback
        def collect(level: int, text: bytes, user_data: Any) -> None:  # llama.cpp's log, kept for backend_info
            lines.append(text.decode("utf-8", "replace"))

        defaults = capi.llama_model_default_params

        def model_params() -> Any:
            params = defaults()
            params.use_extra_bufts = self.extra_buffer_types
            return params

        capi.llama_log_set(collect, None)
        capi.llama_model_default_params = model_params  # Llama() reads its model params from here
        try:
            llm = llama_cpp.Llama(model_path=str(self.model_path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                                  n_threads_batch=self.n_threads, last_n_tokens_size=self.n_ctx, verbose=False)
        except Exception as exc:
            raise EngineFailedError(f"could not load {self.model_path}: {exc}") from exc
        finally:
            capi.llama_model_default_params = defaults
            from llama_cpp._logger import llama_log_callback

            capi.llama_log_set(llama_log_callback, None)
        n_train = llama_cpp.llama_model_n_ctx_train(llm.model)
        if self.n_ctx > n_train:
            raise EngineFailedError(f"LLM_N_CTX={self.n_ctx} exceeds the {n_train}-token context "
                                    f"{self.model_id} was trained with")

        def text_of(token: int) -> str:
            return llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

        template = llm.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
        self._formatter = Jinja2ChatFormatter(template, eos_token=text_of(llm.token_eos()),
                                              bos_token=text_of(llm.token_bos()))
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._bos_text = text_of(llm.token_bos())
        return llm, backend_info(capi.llama_print_system_info().decode("utf-8", "replace"), "".join(lines),
                                 extra_buffer_types=self.extra_buffer_types, load_s=time.perf_counter() - t0)

    def _model(self) -> Llama:
        llm = self._llm
        if llm is None:
            raise EngineNotReadyError("llama.cpp is not loaded", retry_after_s=5)
        return llm

    def stats(self) -> dict[str, int]:
        """KV-cache facts for tests and debugging: tokens held, resets done."""
        return {"n_tokens": self._model().n_tokens, "resets": self.resets, "restores": self.states.restores,
                "saved_states": len(self.states.items)}

    def check_grammar(self, gbnf: str) -> None:
        """InvalidRequestError if llama.cpp cannot parse ``gbnf``."""
        self._grammar(gbnf)

    # -- inference (blocking)

    def _render(self, messages: Sequence[ChatMessage], req: ChatRequest, mode: str) -> str:
        from jinja2 import TemplateError

        try:
            return self._formatter(messages=template_messages(messages, req.tools, mode)).prompt
        except (TemplateError, ValueError, TypeError) as exc:
            raise InvalidRequestError(f"the chat template of {self.model_id} cannot render these messages: {exc}",
                                      param="messages") from None

    def _tokenize(self, llm: Llama, text: str) -> list[int]:
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def build_prompt(self, req: ChatRequest, max_tokens: int) -> Prompt:
        """BLOCKING (tokenizes): the prompt of ``req`` that leaves ``max_tokens`` free in the context window,
        without the oldest non-system messages if needed. InvalidRequestError if even the system messages and
        the newest message leave too little room."""
        llm = self._model()
        msgs = req.messages
        mode = req.tool_choice if req.tools else "none"
        if req.allowed is not None:  # allowed_tools: the same instructions whatever is allowed (one cached prompt)
            mode = "auto"
        forced = f"{FUNCTION_PREFIX}{mode}:\n" if mode not in ("none", "auto", "required") else ""
        droppable = [i for i, m in enumerate(msgs[:-1]) if m.role not in SYSTEM_ROLES]
        call_owner = {tc.id: i for i, m in enumerate(msgs) for tc in (m.tool_calls or [])}

        def attempt(n_drop: int) -> Prompt:
            dropped = set(droppable[:n_drop])
            for i, m in enumerate(msgs[:-1]):  # results of a dropped call go with it
                if m.role == "tool" and call_owner.get(m.tool_call_id or "") in dropped:
                    dropped.add(i)
            kept = [m for i, m in enumerate(msgs) if i not in dropped]
            text = self._render(kept, req, mode) + forced
            return Prompt(text=text, tokens=self._tokenize(llm, text), dropped=len(dropped))

        budget = self.n_ctx - max_tokens
        prompt = attempt(0)
        if len(prompt.tokens) <= budget:
            return prompt
        smallest = attempt(len(droppable)) if droppable else prompt
        if len(smallest.tokens) > budget:
            raise InvalidRequestError(
                f"the conversation does not fit the context window: the system messages and the newest message "
                f"alone take {len(smallest.tokens)} prompt tokens, plus max_tokens {max_tokens} makes "
                f"{len(smallest.tokens) + max_tokens} > {self.n_ctx} (LLM_N_CTX); shorten the newest message or "
                "ask for fewer max_tokens", param="messages")
        lo, hi = 1, len(droppable)  # the fewest dropped messages that fit; hi fits
        while lo < hi:
            mid = (lo + hi) // 2
            if len(attempt(mid).tokens) <= budget:
                hi = mid
            else:
                lo = mid + 1
        return attempt(lo)

    def _grammar(self, gbnf: str) -> LlamaGrammar:
        """A grammar llama.cpp has parsed (an unparsable one would crash the sampler chain)."""
        import llama_cpp
        from llama_cpp import LlamaGrammar

        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            raise InvalidRequestError("tools: llama.cpp could not parse the grammar built from the tool "
                                      "schemas; simplify the parameters schema", param="tools")
        llama_cpp.llama_sampler_free(sampler)
        return LlamaGrammar.from_string(gbnf, verbose=False)

    def _sample(self, llm: Llama, tokens: list[int], sampling: Sampling, *, max_tokens: int,
                stops: Sequence[str] = (), grammar: LlamaGrammar | None = None,
                until: Sequence[str] = ()) -> Generator[str, None, _Run]:
        """Generate after ``tokens``, yielding text as it becomes final; returns the `_Run`.

        Ends at an end-of-generation token or a stop sequence (finish ``stop``; the stop sequence and what
        follows are not part of the text), when the text equals one of ``until`` (``stop``) or after
        ``max_tokens`` tokens (``length``). Text that could still become a stop sequence is held back.
        """
        import llama_cpp

        run = _Run()
        if max_tokens <= 0:
            run.finish = "length"
            return run
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text, sent = "", 0
        llm.set_seed(sampling.seed)
        for token in llm.generate(tokens, temp=sampling.temperature, top_p=sampling.top_p, top_k=0, min_p=0.0,
                                  typical_p=1.0, repeat_penalty=1.0, presence_penalty=sampling.presence_penalty,
                                  frequency_penalty=sampling.frequency_penalty, grammar=grammar):
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                break
            run.tokens.append(token)
            text += decoder.decode(llm.detokenize([token]))
            cut = find_stop(text, stops)
            if cut >= 0:
                text = text[:cut]
                break
            if text in until:
                break
            if len(run.tokens) >= max_tokens:
                run.finish = "length"
                break
            ready = safe_prefix_len(text, stops)
            if ready > sent:
                yield text[sent:ready]
                sent = ready
        if len(text) > sent:  # bytes of an unfinished character at a length cut are dropped
            yield text[sent:]
        run.text = text
        return run

    def _choice(self, llm: Llama, index: int, req: ChatRequest, prompt: Prompt, sampling: Sampling,
                max_tokens: int, grammars: dict[str, LlamaGrammar]) -> Generator[ChatDelta, None, int]:
        """Deltas of one choice, the last with its finish reason; returns its completion tokens."""
        mode = req.tool_choice if req.tools else "none"
        if mode == "none":
            run = yield from _deltas(index, self._sample(llm, prompt.tokens, sampling, max_tokens=max_tokens,
                                                         stops=req.stop))
            yield ChatDelta(index=index, finish_reason=run.finish)
            return len(run.tokens)

        used, tokens, name = 0, prompt.tokens, mode
        if mode in ("auto", "required"):
            head_gbnf, headers = header_gbnf(req.callable_tools(), mode)
            if len(headers) == 1:  # nothing to choose (e.g. no tool allowed): written, not sampled token by token
                head = _Run(tokens=llm.tokenize(headers[0].encode("utf-8"), add_bos=False, special=False),
                            text=headers[0])
            else:
                head = _drain(self._sample(llm, tokens, sampling, max_tokens=max_tokens,
                                           grammar=self._grammar(head_gbnf), until=headers))
            used, tokens = len(head.tokens), tokens + head.tokens
            if head.text not in headers or used > max_tokens:  # max_tokens ran out inside the header
                yield ChatDelta(index=index, text="", finish_reason="length")
                return min(used, max_tokens)
            if head.text == MESSAGE_HEADER:  # a text answer; the model often repeats the newline
                run = yield from _deltas(index, self._sample(llm, tokens, sampling, max_tokens=max_tokens - used,
                                                             stops=req.stop), lstrip=True)
                yield ChatDelta(index=index, finish_reason=run.finish)
                return used + len(run.tokens)
            name = head.text[len(FUNCTION_PREFIX):-2]
        args = _drain(self._sample(llm, tokens, sampling, max_tokens=max_tokens - used, grammar=grammars[name]))
        call = ToolCall(id=new_tool_call_id(), function=FunctionCall(name=name, arguments=args.text))
        yield ChatDelta(index=index, tool_calls=[call],
                        finish_reason="tool_calls" if args.finish == "stop" else "length")
        return used + len(args.tokens)

    def events(self, req: ChatRequest) -> Iterator[StreamStart | ChatDelta | Usage]:
        """BLOCKING generator: `StreamStart`, each choice's deltas in turn, `Usage`. Errors in preparing the
        prompt (context overflow, template, grammar) are raised before the `StreamStart`."""
        llm = self._model()
        max_tokens = req.max_tokens or self.max_tokens
        prompt = self.build_prompt(req, max_tokens)
        grammars = {fn.name: self._grammar(arguments_gbnf(fn)) for fn in req.tools} if req.tools else {}
        headers = {TRUNCATED_HEADER: str(prompt.dropped)} if prompt.dropped else {}
        if prompt.dropped:
            log.info("left out the %d oldest messages to fit %d prompt tokens + max_tokens %d in n_ctx %d",
                     prompt.dropped, len(prompt.tokens), max_tokens, self.n_ctx, extra={"engine": "llama-cpp"})
        yield StreamStart(prompt_tokens=len(prompt.tokens), headers=headers)
        temperature = self.default_temperature if req.temperature is None else req.temperature
        completion = 0
        for index in range(req.n):
            # Without LLM_PROMPT_CACHE, evaluate the prompt afresh: a KV-cache hit evaluates the prompt's tail
            # in another batch shape, which moves logits in the last bits and can flip greedy (temperature 0)
            # picks. Only the phases of one tool call reuse the cache then (the same steps every time, so the
            # same numbers). With it, llama.cpp keeps the longest common prefix of the previous evaluation.
            if not self.prompt_cache:
                llm.reset()
                self.resets += 1
            else:
                self.states.restore(llm, prompt.tokens)
            sampling = Sampling(
                temperature=temperature,
                top_p=self.default_top_p if req.top_p is None else req.top_p,
                presence_penalty=req.presence_penalty or 0.0,
                frequency_penalty=req.frequency_penalty or 0.0,
                seed=choice_seed(req.seed, index, temperature),
            )
            completion += yield from self._choice(llm, index, req, prompt, sampling, max_tokens, grammars)
            self.states.save(llm)
        yield Usage(prompt_tokens=len(prompt.tokens), completion_tokens=completion)


WORKER_METHODS = frozenset({"build_prompt", "check_grammar", "stats", "events"})
MAX_CRASHES_IN_A_ROW = 3
"""Crashes without an answer in between after which the engine stops restarting llama.cpp (not ready)."""


class LlamaCppEngine:
    """`ChatEngine` on llama.cpp, which runs in a child process (`LlamaCore` there; `services.llm.worker`).

    Requests go through the engine's runner (``MAX_CONCURRENCY`` is 1; ``MAX_QUEUE`` may wait) and from its
    thread to the child. A watchdog thread waits on each child; when llama.cpp's process dies (a crash, or
    killed), the engine is not ready at once, the request in flight gets 503 ``engine_not_ready`` naming the
    signal, and a new child is started (ready again once it has loaded, about a second). After
    `MAX_CRASHES_IN_A_ROW` deaths without an answer in between it stays down: not ready, with the reason."""

    name = "llama-cpp"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model_id = model_id(settings)
        self.model_path: Path | None = settings.llm_model_path  # a bundled model's path is known once joined
        self.n_ctx = settings.llm_n_ctx
        self.n_threads = settings.llm_n_threads or default_threads()
        self.max_tokens = settings.llm_max_tokens
        self.prompt_cache = settings.llm_prompt_cache
        self.runner = InferenceRunner.from_settings(self.name, settings)
        self.backend: dict[str, Any] = {}
        self.crashes = 0
        self._crashes_in_a_row = 0
        self._child: ChildObject | None = None
        self._closed = False
        self._error: str | None = None
        self._deaths: weakref.WeakKeyDictionary[ChildObject, str] = weakref.WeakKeyDictionary()  # handled deaths
        self._death_lock = threading.Lock()

    # -- lifecycle

    def _spawn(self) -> None:
        """BLOCKING: a child process with the model loaded (a bundled model joined first, once)."""
        self.model_path, _ = resolve_model(self.settings)
        setup = functools.partial(configure_logging, self.settings.service_name, level=self.settings.log_level,
                                  json_logs=self.settings.log_json)
        child = ChildObject(LlamaCore, self.settings, methods=WORKER_METHODS, setup=setup)
        try:
            backend = child.start()
        except ChildDied as died:
            raise EngineFailedError(
                f"llama.cpp {describe_exit(died.exitcode)} while loading {self.model_path}") from None
        if self._closed:
            child.stop()
            return
        self.backend = backend
        self._child = child
        threading.Thread(target=self._watch, args=(child,), name=f"llm-watch-{child.pid}", daemon=True).start()
        buffers = ", ".join(f"{k} {v}" for k, v in backend["buffers"].items()) or "none reported"
        log.info("loaded %s from %s in %.2f s (n_ctx %d, %d threads) in process %s; llama.cpp CPU backend: %s; "
                 "buffers: %s; extra buffer types %s", self.model_id, self.model_path, backend["load_s"],
                 self.n_ctx, self.n_threads, child.pid, " ".join(backend["cpu_features"]) or "baseline x86-64",
                 buffers, "on" if backend["extra_buffer_types"] else "off", extra={"engine": self.name})

    async def start(self) -> None:
        self._closed = False
        self._error = None
        try:
            await load_in_thread(self._spawn)
        except Exception as exc:
            self._error = str(exc)
            raise

    def ready(self) -> bool:
        return self._child is not None and self._child.alive() and not self._closed

    async def aclose(self) -> None:
        self._closed = True
        child, self._child = self._child, None
        if child is not None:
            await load_in_thread(child.stop)

    def _watch(self, child: ChildObject) -> None:
        """Watchdog thread of one child: handles its death (restart) even when no request is running."""
        exitcode = child.wait()
        if not self._closed and self._child is child:
            self._died(child, exitcode)

    def _died(self, child: ChildObject, exitcode: int | None) -> str:
        """Handle the death of ``child`` once (the watchdog and a request may both see it): not ready, then a
        new child unless deaths repeat. Returns what happened, for the request's error."""
        with self._death_lock:
            if child in self._deaths:
                return self._deaths[child]
            if self._child is child:
                self._child = None
            self.crashes += 1
            self._crashes_in_a_row += 1
            what = f"llama.cpp (process {child.pid}) {describe_exit(exitcode)}"
            log.error("%s; %d in a row", what, self._crashes_in_a_row, extra={"engine": self.name})
            child.stop()
            if self._closed:
                outcome = f"{what}; the service is stopping"
            elif self._crashes_in_a_row >= MAX_CRASHES_IN_A_ROW:
                self._error = f"{what}, {self._crashes_in_a_row} crashes in a row: not restarted (see the service log)"
                outcome = self._error
            else:
                try:
                    self._spawn()
                except Exception as exc:
                    self._error = f"{what}, and restarting it failed: {exc}"
                    outcome = self._error
                else:
                    outcome = f"{what}; it was restarted, retry the request"
            self._deaths[child] = outcome
            return outcome

    def describe(self) -> dict[str, Any]:
        status = "ready" if self.ready() else ("closed" if self._closed else ("failed" if self._error else "loading"))
        info = {"engine": self.name, "model": self.model_id, "model_path": str(self.model_path),
                "n_ctx": self.n_ctx, "n_threads": self.n_threads, "max_tokens": self.max_tokens,
                "prompt_cache": self.prompt_cache, "status": status,
                "worker_pid": self._child.pid if self._child is not None else None, "crashes": self.crashes,
                "cpu_features": self.backend.get("cpu_features"), "buffers": self.backend.get("buffers"),
                "extra_buffer_types": self.settings.llm_extra_buffer_types}
        if self._error and status != "ready":
            info["reason"] = self._error
        return info

    def model_ids(self) -> list[str]:
        return [self.model_id, ALIAS]

    # -- validation (event loop: pure Python, no llama.cpp calls)

    def validate(self, req: ChatRequest) -> None:
        if req.max_tokens is not None and req.max_tokens > self.max_tokens:
            raise InvalidRequestError(
                f"max_tokens is {req.max_tokens}; this service generates at most {self.max_tokens} tokens per "
                f"choice (LLM_MAX_TOKENS): ask for 1..{self.max_tokens} or omit it", param="max_tokens")
        seen_calls: set[str] = set()
        for i, m in enumerate(req.messages):
            if m.name and m.role != "tool":
                raise InvalidRequestError(
                    f"messages[{i}].name: participant names are not supported (the chat template has no place "
                    "for them); put the name in the content", param=f"messages.{i}.name")
            seen_calls.update(tc.id for tc in m.tool_calls or [])
            if m.role == "tool" and m.tool_call_id not in seen_calls:
                raise InvalidRequestError(
                    f"messages[{i}] answers tool call {m.tool_call_id!r}, which no earlier assistant message made",
                    param=f"messages.{i}.tool_call_id")
        if req.tools:
            if req.stop:
                raise InvalidRequestError(
                    "stop sequences cannot be combined with tools (tool-call arguments are grammar-constrained "
                    "JSON that a stop sequence would cut); omit stop, or tools / set tool_choice to none",
                    param="stop")
            for fn in req.tools:
                arguments_gbnf(fn)

    # -- calls into the child (blocking: the runner's thread, or a test's)

    def _live_child(self) -> ChildObject:
        child = self._child
        if child is None or self._closed:
            reason = f": {self._error}" if self._error else ""
            raise EngineNotReadyError(f"{self.name} is not loaded{reason}", retry_after_s=5)
        return child

    def _crashed(self, child: ChildObject, died: ChildDied) -> EngineNotReadyError:
        """The error for a request whose child died under it (after `_died` has handled the death)."""
        outcome = self._died(child, died.exitcode)
        return EngineNotReadyError(f"{outcome} (it died while answering this request)",
                                   retry_after_s=1 if self.ready() else 60)

    def call(self, method: str, *args: Any) -> Any:
        """BLOCKING: ``LlamaCore.method(*args)`` in the child."""
        child = self._live_child()
        try:
            result = child.call(method, *args)
        except ChildDied as died:
            raise self._crashed(child, died) from None
        self._crashes_in_a_row = 0
        return result

    def build_prompt(self, req: ChatRequest, max_tokens: int) -> Prompt:
        """BLOCKING: `LlamaCore.build_prompt` in the child."""
        return self.call("build_prompt", req, max_tokens)

    def events(self, req: ChatRequest) -> Iterator[StreamStart | ChatDelta | Usage]:
        """BLOCKING generator: `LlamaCore.events` in the child."""
        child = self._live_child()
        try:
            yield from child.iterate("events", req)
        except ChildDied as died:
            raise self._crashed(child, died) from None
        self._crashes_in_a_row = 0

    def _collect(self, req: ChatRequest) -> list[StreamStart | ChatDelta | Usage]:
        return list(self.events(req))

    async def complete(self, req: ChatRequest) -> ChatResult:
        return assemble(await self.runner.run(self._collect, req, operation="complete"))

    def stream(self, req: ChatRequest) -> AsyncIterator[StreamStart | ChatDelta | Usage]:
        # The runner's own generator, so the route's aclose() releases the slot at once.
        return self.runner.iterate(self.events, req, operation="stream")
