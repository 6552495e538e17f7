"""One turn, end to end: (audio -> denoise -> stt ->) input guardrails -> memory -> agent -> output guardrails
(-> tts), with per-stage timings, metrics and the fallbacks of every stage.

- `Orchestrator.text_turn`: a transcript in, the answer out (POST /mcp/transcript); spoken when asked.
- `Orchestrator.voice_turn`: audio in, transcript + answer + one WAV out (POST /v1/voice/turn).
- `Orchestrator.voice_turn_stream`: the same as events (POST /v1/voice/turn/stream, SSE). The answer is cut into
  sentences while the LLM streams it; each sentence is checked by output guardrails and spoken as soon as it is
  complete, while the LLM goes on, so the first audio waits for the first sentence only. Events, in order:
  ``transcript``, then per sentence ``text`` and ``audio`` (or ``audio_error`` when no TTS could speak it; sentence
  order kept), then ``done`` (or ``error``).

What a turn never does: lose what the user said because a dependency failed. Denoising failing -> raw audio;
primary LLM failing -> fallback LLM; primary TTS failing -> fallback TTS; both TTS failing -> the answer as text
with a note (``audio_error`` events when streamed); memory failing -> the turn is answered
without history (and the answer is not stored); guardrails down -> the fail mode (closed: an apology that says
so). Only stt failing (nothing to answer) or both LLMs failing end a turn with an error.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from services.common import context
from services.common.errors import BusyError, ServiceError
from services.common.metrics import ORCH_BLOCKED, ORCH_FALLBACKS, ORCH_STAGE_LATENCY, ORCH_TURNS, service
from services.orchestrator_enhanced.agent import Agent, AgentAnswer, TextDelta, ToolCalled
from services.orchestrator_enhanced.guard import UNAVAILABLE, Guardrails
from services.orchestrator_enhanced.memory import ConversationMemory, trim_to_budget
from services.orchestrator_enhanced.settings import Settings
from services.orchestrator_enhanced.speech import Speech, SpokenAudio
from services.orchestrator_enhanced.spoken import split_sentences
from services.orchestrator_enhanced.turn import TurnContext

log = logging.getLogger(__name__)

REFUSAL = "Sorry, I can't help with that request."
GUARDRAILS_DOWN = "Sorry, I can't check requests right now, so I can't answer that. Please try again in a moment."
WITHHELD = "Sorry, I can't say that."
NO_SPEECH = "Sorry, I didn't catch that. Could you say it again?"

@dataclass
class TurnResult:
    response: str
    session_id: str
    prompt_version: str
    llm_engine: str | None
    tool_calls: list[dict[str, Any]]
    blocked: bool
    block_reason: str | None
    timings: dict[str, float]
    mode: str
    transcript: str | None = None
    audio: SpokenAudio | None = None
    notes: list[str] = field(default_factory=list)
    denoised: bool | None = None
    """Whether the audio was denoised before stt (False: preprocessing was asked but skipped or failed);
    None for text turns and when preprocessing was off."""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "response": self.response, "session_id": self.session_id, "prompt_version": self.prompt_version,
            "llm_engine": self.llm_engine, "tool_calls": self.tool_calls, "blocked": self.blocked,
            "block_reason": self.block_reason, "timings": self.timings, "mode": self.mode,
        }
        if self.transcript is not None:
            out["transcript"] = self.transcript
        if self.audio is not None:
            out["audio"] = base64.b64encode(self.audio.wav).decode("ascii")
            out["audio_format"] = "wav"
            out["tts_service"] = self.audio.service
            out["tts_engine"] = self.audio.engine
        if self.notes:
            out["notes"] = self.notes
        if self.denoised is not None:
            out["denoised"] = self.denoised
        return out


@dataclass
class _Sentence:
    """One sentence of a streamed answer, checked and spoken."""

    text: str
    audio: SpokenAudio | None = None
    withheld: str | None = None
    """Output guardrails' reason when the sentence was replaced by the withheld-answer apology."""
    skip: bool = False
    """A withheld sentence right after another withheld one: the apology is said once."""
    speech_error: str | None = None


class Timer:
    """Per-stage milliseconds of one turn, observed into orchestrator_stage_seconds."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.ms: dict[str, float] = {}

    @asynccontextmanager
    async def stage(self, name: str) -> AsyncIterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t)

    def add(self, name: str, seconds: float) -> None:
        self.ms[name] = round(self.ms.get(name, 0.0) + seconds * 1000, 1)
        ORCH_STAGE_LATENCY.labels(service(), name).observe(seconds)

    def mark(self, name: str) -> None:
        """A point in time since the turn started (first_text, first_audio)."""
        if name not in self.ms:
            self.add(name, time.perf_counter() - self.t0)

    def done(self) -> dict[str, float]:
        self.mark("total")
        return dict(self.ms)


class TurnGate:
    """At most ``slots`` turns at once and ``queue`` waiting; one more is refused with 503 ``busy``."""

    def __init__(self, slots: int, queue: int) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.queue = queue
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.slots.locked() and self.waiting >= self.queue:
            raise BusyError(f"{self.waiting} turns are waiting already; retry shortly", retry_after_s=2)
        self.waiting += 1
        try:
            deadline = context.get_deadline()
            async with asyncio.timeout(deadline.remaining() if deadline else None):
                await self.slots.acquire()
        except TimeoutError:
            raise BusyError("no turn slot freed up before the deadline; retry shortly", retry_after_s=2) from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.slots.release()


def new_session_id() -> str:
    return uuid.uuid4().hex


class Orchestrator:
    def __init__(self, settings: Settings, *, agent: Agent, memory: ConversationMemory, guard: Guardrails,
                 speech: Speech) -> None:
        self.settings = settings
        self.agent = agent
        self.memory = memory
        self.guard = guard
        self.speech = speech
        self.gate = TurnGate(settings.max_concurrency, settings.max_queue)

    # --- pieces -------------------------------------------------------------------------------------------

    async def _history(self, ctx: TurnContext, timer: Timer, notes: list[str]) -> list[BaseMessage] | None:
        """Trimmed history, or None when memory failed (the turn goes on without it)."""
        try:
            async with timer.stage("memory"):
                history = await self.memory.load(ctx.session_id)
        except ServiceError as exc:
            ORCH_FALLBACKS.labels(service(), "memory", "unavailable").inc()
            log.error("memory unavailable, answering without history: %s", exc.message)
            notes.append("memory unavailable: answered without conversation history")
            return None
        return trim_to_budget(history, self.settings.memory_max_tokens)

    async def _remember(self, ctx: TurnContext, user: str, answer: str) -> None:
        try:
            await self.memory.append(ctx.session_id, [HumanMessage(user), AIMessage(answer)])
        except ServiceError as exc:
            ORCH_FALLBACKS.labels(service(), "memory", "unavailable").inc()
            log.error("memory unavailable, the turn was not stored: %s", exc.message)

    async def _check_input(self, text: str, ctx: TurnContext, timer: Timer) -> tuple[str, str | None]:
        """(text for the agent, refusal reason or None)."""
        async with timer.stage("guard_input"):
            check = await self.guard.check_input(text, ctx)
        if check.safe:
            return check.text, None
        reason = check.reason or "unsafe"
        ORCH_BLOCKED.labels(service(), "input", reason).inc()
        if reason != UNAVAILABLE:
            await self.guard.escalate(f"input refused: {reason}", {"transcript": text, **check.details}, ctx)
        return check.text, reason

    @staticmethod
    def _refusal(reason: str) -> str:
        return GUARDRAILS_DOWN if reason == UNAVAILABLE else REFUSAL

    async def _check_output(self, text: str, ctx: TurnContext, timer: Timer) -> tuple[str, str | None]:
        async with timer.stage("guard_output"):
            check = await self.guard.check_output(text, ctx)
        if check.safe:
            return check.text, None
        reason = check.reason or "unsafe"
        ORCH_BLOCKED.labels(service(), "output", reason).inc()
        log.warning("answer withheld by output guardrails (%s)", reason)
        return (GUARDRAILS_DOWN if reason == UNAVAILABLE else WITHHELD), reason

    def _result(self, ctx: TurnContext, response: str, timer: Timer, *, answer: AgentAnswer | None = None,
                block: str | None = None, transcript: str | None = None, notes: list[str] | None = None,
                audio: SpokenAudio | None = None) -> TurnResult:
        return TurnResult(
            response=response, session_id=ctx.session_id, prompt_version=self.settings.prompt_version,
            llm_engine=answer.llm_engine if answer else None,
            tool_calls=[c.as_dict() for c in answer.tool_calls] if answer else [],
            blocked=block is not None, block_reason=block, timings=timer.done(), mode=self.agent.mode,
            transcript=transcript, audio=audio, notes=notes or [],
        )

    def _count(self, kind: str, outcome: str) -> None:
        ORCH_TURNS.labels(service(), kind, outcome, self.settings.prompt_version).inc()

    # --- turns ------------------------------------------------------------------------------------------------

    async def text_turn(self, text: str, ctx: TurnContext, *, speak: bool = False, kind: str = "text",
                        timer: Timer | None = None, transcript: str | None = None) -> TurnResult:
        timer = timer or Timer()
        try:
            result = await self._text_turn(text, ctx, speak=speak, timer=timer, transcript=transcript)
        except BaseException:
            self._count(kind, "error")
            raise
        self._count(kind, "blocked" if result.blocked else "ok")
        return result

    async def _text_turn(self, text: str, ctx: TurnContext, *, speak: bool, timer: Timer,
                         transcript: str | None) -> TurnResult:
        notes: list[str] = []
        clean, refused = await self._check_input(text, ctx, timer)
        answer: AgentAnswer | None = None
        block = refused
        if refused:
            response = self._refusal(refused)
        else:
            history = await self._history(ctx, timer, notes)
            async with timer.stage("agent"):
                answer = await self.agent.run(clean, history or [], ctx)
            response, withheld = await self._check_output(answer.text, ctx, timer)
            block = withheld
            if history is not None and not withheld:
                await self._remember(ctx, clean, response)
        audio = await self._speak(response, timer, notes, ctx.voice) if speak else None
        return self._result(ctx, response, timer, answer=answer, block=block, transcript=transcript, notes=notes,
                            audio=audio)

    async def _speak(self, text: str, timer: Timer, notes: list[str], voice: str | None) -> SpokenAudio | None:
        """The answer's audio; None (with a note) when no TTS could speak it: the text is not lost for that."""
        try:
            async with timer.stage("tts"):
                return await self.speech.synthesize(text, voice=voice)
        except ServiceError as exc:
            notes.append(self._speech_failed(exc))
            return None

    @staticmethod
    def _speech_failed(exc: ServiceError) -> str:
        ORCH_FALLBACKS.labels(service(), "tts", "failed").inc()
        log.error("no TTS could speak the answer: %s", exc.message)
        return f"speech unavailable: {exc.message}"

    async def _listen(self, audio: bytes, timer: Timer, ctx: TurnContext) -> tuple[str, bool | None]:
        """(transcript, whether the audio was denoised; None when preprocessing was off for this turn)."""
        denoised = None
        if self.settings.enable_preprocessing if ctx.preprocess is None else ctx.preprocess:
            async with timer.stage("preprocess"):
                audio, denoised = await self.speech.preprocess(audio)
        async with timer.stage("stt"):
            transcript = await self.speech.transcribe(audio)
        return transcript.text, denoised

    async def voice_turn(self, audio: bytes, ctx: TurnContext) -> TurnResult:
        timer = Timer()
        try:
            text, denoised = await self._listen(audio, timer, ctx)
        except BaseException:
            self._count("voice", "error")
            raise
        if not text:
            notes: list[str] = []
            spoken = await self._speak(NO_SPEECH, timer, notes, ctx.voice)
            self._count("voice", "no_speech")
            result = self._result(ctx, NO_SPEECH, timer, transcript="", audio=spoken, notes=notes)
        else:
            result = await self.text_turn(text, ctx, speak=True, kind="voice", timer=timer, transcript=text)
        result.denoised = denoised
        return result

    async def voice_turn_stream(self, audio: bytes, ctx: TurnContext) -> AsyncIterator[dict[str, Any]]:
        """Events of a streamed voice turn (see the module docstring); errors end it with an ``error`` event
        raised as the exception for the route to shape."""
        timer = Timer()
        outcome = "error"
        try:
            text, denoised = await self._listen(audio, timer, ctx)
            yield {"event": "transcript", "text": text, "timings": dict(timer.ms),
                   **({} if denoised is None else {"denoised": denoised})}
            if not text:
                outcome = "no_speech"
                async for event in self._speak_sentences(self._fixed(NO_SPEECH), ctx, timer, check=False):
                    yield event
                yield {"event": "done", **self._done(self._result(ctx, NO_SPEECH, timer, transcript=""), denoised)}
                return
            notes: list[str] = []
            clean, refused = await self._check_input(text, ctx, timer)
            if refused:
                outcome = "blocked"
                response = self._refusal(refused)
                async for event in self._speak_sentences(self._fixed(response), ctx, timer, check=False):
                    yield event
                yield {"event": "done", **self._done(self._result(ctx, response, timer, block=refused, transcript=text),
                                                     denoised)}
                return
            history = await self._history(ctx, timer, notes)
            holder: dict[str, Any] = {}
            spoken: list[str] = []
            withheld: list[str] = []
            async for event in self._speak_sentences(self._agent_text(clean, history or [], ctx, timer, holder),
                                                     ctx, timer, check=True, spoken=spoken, withheld=withheld):
                yield event
            answer: AgentAnswer = holder["answer"]
            response = " ".join(spoken)
            if history is not None and not withheld:
                await self._remember(ctx, clean, response)
            outcome = "blocked" if withheld else "ok"
            yield {"event": "done", **self._done(self._result(ctx, response, timer, answer=answer,
                                                              block=withheld[0] if withheld else None,
                                                              transcript=text, notes=notes), denoised)}
        finally:
            self._count("voice_stream", outcome)

    @staticmethod
    def _done(result: TurnResult, denoised: bool | None) -> dict[str, Any]:
        result.denoised = denoised
        return result.as_json()

    @staticmethod
    async def _fixed(text: str) -> AsyncIterator[str]:
        yield text

    async def _agent_text(self, text: str, history: list[BaseMessage], ctx: TurnContext, timer: Timer,
                          holder: dict[str, Any]) -> AsyncIterator[str]:
        t = time.perf_counter()
        try:
            async for event in self.agent.stream(text, history, ctx):
                if isinstance(event, TextDelta):  # complete sentences (or an opening clause): speak them now
                    timer.mark("first_text")
                    yield event.text + "\n"
                elif isinstance(event, ToolCalled):
                    continue
                else:
                    holder["answer"] = event
        finally:
            timer.add("agent", time.perf_counter() - t)

    async def _speak_sentences(self, pieces: AsyncIterator[str], ctx: TurnContext, timer: Timer, *, check: bool,
                               spoken: list[str] | None = None,
                               withheld: list[str] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Cut streamed text into sentences; check and speak each in its own task while the text goes on;
        yield ``text`` and ``audio`` events in sentence order."""
        queue: asyncio.Queue[asyncio.Task[_Sentence] | None] = asyncio.Queue()
        previous: asyncio.Task[Any] | None = None

        async def one(sentence: str, before: asyncio.Task[Any] | None) -> _Sentence:
            reason = None
            if check:
                sentence, reason = await self._check_output(sentence, ctx, timer)
            if reason and before is not None:  # one withheld sentence is said once, not per sentence
                try:
                    if (await before).withheld:
                        return _Sentence(sentence, skip=True, withheld=reason)
                except Exception:  # noqa: BLE001 - the earlier sentence reports its own error
                    pass
            t = time.perf_counter()
            try:
                audio = await self.speech.synthesize(sentence, voice=ctx.voice)
            except ServiceError as exc:  # the text still goes out; the client is told the audio is missing
                return _Sentence(sentence, withheld=reason, speech_error=self._speech_failed(exc))
            finally:
                timer.add("tts", time.perf_counter() - t)
            return _Sentence(sentence, audio=audio, withheld=reason)

        async def produce() -> None:
            nonlocal previous
            buffer = ""
            try:
                async for piece in pieces:
                    buffer += piece
                    sentences, buffer = split_sentences(buffer, first=previous is None)
                    for s in sentences:
                        previous = asyncio.create_task(one(s, previous))
                        await queue.put(previous)
                sentences, _ = split_sentences(buffer, final=True)
                for s in sentences:
                    previous = asyncio.create_task(one(s, previous))
                    await queue.put(previous)
            finally:
                await queue.put(None)

        producer = asyncio.create_task(produce())
        index = 0
        try:
            while True:
                task = await queue.get()
                if task is None:
                    break
                done = await task
                if done.withheld and withheld is not None:
                    withheld.append(done.withheld)
                if done.skip:
                    continue
                if spoken is not None:
                    spoken.append(done.text)
                yield {"event": "text", "index": index, "text": done.text}
                if done.audio is None:
                    yield {"event": "audio_error", "index": index, "message": done.speech_error}
                else:
                    timer.mark("first_audio")
                    yield {"event": "audio", "index": index, "format": "wav", "tts_service": done.audio.service,
                           "tts_engine": done.audio.engine, "audio": base64.b64encode(done.audio.wav).decode("ascii")}
                index += 1
            await producer  # surfaces the agent's error, if any
        finally:
            if not producer.done():
                producer.cancel()
            while not queue.empty():
                leftover = queue.get_nowait()
                if leftover is not None and not leftover.done():
                    leftover.cancel()
            await asyncio.gather(producer, return_exceptions=True)

