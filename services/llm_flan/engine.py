"""FLAN-T5 as a `ChatEngine`: prompt building, tools by prompting, generation through the dynamic batcher.

The backend (transformers or CTranslate2, `backends.py`) holds the model; the `Batcher` owns the one thread
that uses it; this module turns an OpenAI chat request into generation rows and back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from services.common.errors import EngineNotReadyError, InvalidRequestError
from services.common.inference import load_in_thread
from services.common.openai_chat import ChatDelta, ChatRequest, ChatResult, Choice, StreamStart, Usage
from services.llm_flan.backends import Sampling, Seq2SeqBackend, build_backend
from services.llm_flan.batching import Batcher, DoneEvent, Job, TextEvent
from services.llm_flan.prompting import Prompt, build_prompt
from services.llm_flan.settings import Settings
from services.llm_flan.tools import ToolCaller, ToolDecision, finite

log = logging.getLogger(__name__)

TRUNCATED_HEADER = "X-Context-Truncated-Messages"
"""Response header: how many of the oldest messages were left out to fit the encoder (absent when none)."""


class FlanT5Engine:
    name = "flan-t5"

    def __init__(self, settings: Settings, backend: Seq2SeqBackend | None = None) -> None:
        self.settings = settings
        self.model = settings.model_id()
        self.backend = backend or build_backend(settings)
        self.batcher = Batcher(self.backend, engine=self.name, window_s=settings.flan_t5_batch_window_ms / 1000,
                               max_batch=settings.flan_t5_max_batch_size, max_queue=settings.max_queue)
        self.tools = ToolCaller(self._score, self._generate_greedy, self._count)
        self._loaded = False
        self._load_error: str | None = None
        self._group = 0

    # --- lifecycle -------------------------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        ids = [self.model, "llm-flan"]
        short = self.model.rstrip("/").rsplit("/", 1)[-1]
        if short not in ids:
            ids.append(short)
        return ids

    async def start(self) -> None:
        self.batcher.start()
        t0 = time.perf_counter()
        try:
            await load_in_thread(self.backend.load)
        except Exception as exc:
            self._load_error = f"{type(exc).__name__}: {exc}"
            raise
        self._loaded = True
        log.info("%s loaded on %s in %.1f s", self.model, self.backend.name, time.perf_counter() - t0)

    def ready(self) -> bool:
        return self._loaded

    async def aclose(self) -> None:
        await self.batcher.aclose()

    def describe(self) -> dict[str, Any]:
        status = "ready" if self._loaded else (f"failed to load: {self._load_error}" if self._load_error else "loading")
        info: dict[str, Any] = {"engine": self.name, "model": self.model, "status": status}
        info.update(self.backend.describe())
        info.update(batching={"window_ms": self.settings.flan_t5_batch_window_ms,
                              "max_batch_size": self.settings.flan_t5_max_batch_size})
        return info

    # --- requests ----------------------------------------------------------------------------------------------

    def validate(self, req: ChatRequest) -> None:
        cap = self.settings.flan_t5_max_length
        if req.max_tokens is not None and req.max_tokens > cap:
            raise InvalidRequestError(f"max_tokens {req.max_tokens} is over this model's limit of {cap} "
                                      "(FLAN_T5_MAX_LENGTH)", param="max_tokens")
        sampling = (self.settings.flan_t5_temperature if req.temperature is None else req.temperature) > 0
        if req.seed is not None and sampling and not self.backend.supports_seed:
            raise InvalidRequestError(f"seed is not supported by the {self.backend.name} backend when sampling; "
                                      "send temperature 0 (deterministic) or no seed", param="seed")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(req, name)
            if value not in (None, 0, 0.0):
                raise InvalidRequestError(f"{name} is not supported by FLAN-T5 generation; send 0 or leave it out",
                                          param=name)

    def _sampling(self, req: ChatRequest) -> Sampling:
        temperature = self.settings.flan_t5_temperature if req.temperature is None else req.temperature
        top_p = self.settings.flan_t5_top_p if req.top_p is None else req.top_p
        if temperature == 0.0:
            return Sampling(0.0, 1.0)
        return Sampling(temperature, top_p, req.seed)

    def _count(self, text: str) -> int:
        return len(self.backend.encode(text))

    def _require_ready(self) -> None:
        if not self._loaded:
            raise EngineNotReadyError(f"{self.model} is not ready: {self.describe()['status']}", retry_after_s=5)

    def _prompt(self, req: ChatRequest, task: str | None = None) -> Prompt:
        return build_prompt(req.messages, self._count, self.settings.flan_t5_max_input_tokens, task=task)

    def _jobs(self, input_ids: list[int], req: ChatRequest) -> list[Job]:
        self._group += 1
        max_new = req.max_tokens or self.settings.flan_t5_max_length
        sampling = self._sampling(req)
        return [Job(input_ids, max_new, sampling, list(req.stop), self._group) for _ in range(req.n)]

    async def _score(self, prompt: str, candidates: list[str]) -> list[float]:
        source = self.backend.encode(prompt)
        encoded = [self.backend.encode(c) for c in candidates]
        scores = await self.batcher.call(lambda: self.backend.score(source, encoded))
        return [s / max(1, len(e)) for s, e in zip(finite(scores), encoded)]

    async def _generate_greedy(self, prompt: str, max_tokens: int) -> tuple[str, int, int]:
        ids = self.backend.encode(prompt)
        self._group += 1
        job = Job(ids, max_tokens, Sampling(0.0, 1.0), [], self._group)
        self.batcher.submit([job])
        text, tokens = [], 0
        async for event in self.batcher.results(job):
            if isinstance(event, TextEvent):
                text.append(event.text)
            else:
                tokens = event.completion_tokens
        return "".join(text), len(ids), tokens

    async def _decide_tools(self, req: ChatRequest) -> ToolDecision | None:
        tools = req.callable_tools()
        if not tools or req.tool_choice == "none":
            return None

        def transcript(task: str) -> tuple[str, int]:
            prompt = self._prompt(req, task)
            return prompt.text, self._count(prompt.text)

        return await self.tools.decide(tools, req.tool_choice, req.messages, transcript)

    async def _prepare(self, req: ChatRequest) -> tuple[ToolDecision | None, Prompt | None, list[int], dict[str, str]]:
        self._require_ready()
        decision = await self._decide_tools(req)
        if decision is not None and decision.call is not None:
            return decision, None, [], {}
        prompt = self._prompt(req)
        headers = {TRUNCATED_HEADER: str(prompt.dropped_messages)} if prompt.dropped_messages else {}
        if prompt.dropped_messages:
            log.info("left out the %d oldest messages to fit %d input tokens", prompt.dropped_messages,
                     self.settings.flan_t5_max_input_tokens)
        return decision, prompt, self.backend.encode(prompt.text), headers

    async def complete(self, req: ChatRequest) -> ChatResult:
        decision, prompt, ids, headers = await self._prepare(req)
        tool_cost = decision.cost if decision is not None else None
        if decision is not None and decision.call is not None:
            usage = Usage(decision.cost.prompt_tokens, decision.cost.completion_tokens)
            return ChatResult([Choice(i, None, "tool_calls", [decision.call]) for i in range(req.n)], usage)
        jobs = self._jobs(ids, req)
        self.batcher.submit(jobs)

        async def collect(job: Job) -> tuple[str, DoneEvent]:
            parts: list[str] = []
            done = DoneEvent("stop", 0)
            async for event in self.batcher.results(job):
                if isinstance(event, TextEvent):
                    parts.append(event.text)
                else:
                    done = event
            return "".join(parts), done

        try:
            outcomes = await asyncio.gather(*(collect(j) for j in jobs))
        finally:
            for job in jobs:
                job.cancelled = True
        choices = [Choice(i, text, done.finish_reason) for i, (text, done) in enumerate(outcomes)]  # type: ignore[arg-type]
        usage = Usage(len(ids) + (tool_cost.prompt_tokens if tool_cost else 0),
                      sum(d.completion_tokens for _, d in outcomes) + (tool_cost.completion_tokens if tool_cost else 0))
        return ChatResult(choices, usage, headers)

    async def stream(self, req: ChatRequest) -> AsyncIterator[StreamStart | ChatDelta | Usage]:
        decision, prompt, ids, headers = await self._prepare(req)
        tool_cost = decision.cost if decision is not None else None
        if decision is not None and decision.call is not None:
            yield StreamStart(decision.cost.prompt_tokens, headers)
            for i in range(req.n):
                yield ChatDelta(i, tool_calls=[decision.call], finish_reason="tool_calls")
            yield Usage(decision.cost.prompt_tokens, decision.cost.completion_tokens)
            return
        jobs = self._jobs(ids, req)
        self.batcher.submit(jobs)
        completion = 0
        try:
            yield StreamStart(len(ids), headers)
            for i, job in enumerate(jobs):
                async for event in self.batcher.results(job):
                    if isinstance(event, TextEvent):
                        yield ChatDelta(i, text=event.text)
                    else:
                        completion += event.completion_tokens
                        yield ChatDelta(i, finish_reason=event.finish_reason)  # type: ignore[arg-type]
        finally:
            for job in jobs:
                job.cancelled = True
        yield Usage(len(ids) + (tool_cost.prompt_tokens if tool_cost else 0),
                    completion + (tool_cost.completion_tokens if tool_cost else 0))

