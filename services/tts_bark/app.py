"""tts-bark routes: /synthesize, OpenAI-compatible /v1/audio/speech, /voices. Routes only: the chain
(`FallbackTts`) validates, splits and speaks; the common audio kit encodes."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from services.common import context
from services.common.app import Dependency, create_service_app
from services.common.audio import AudioSegment, encode_wav
from services.common.errors import InvalidRequestError, ServiceError
from services.tts.app import streaming_wav_header
from services.tts_bark.engine import (
    SENTENCE_GAP_S,
    SPEED_RANGE,
    BarkEngine,
    FallbackTts,
    PiperClient,
    Plan,
    SentenceTts,
    SpokenSentence,
    join_sentences,
)
from services.tts_bark.settings import Settings

OPENAI_PCM_RATE = 24_000  # OpenAI's `pcm`: 24 kHz, 16-bit, mono, little-endian
OPENAI_MODELS = ("bark", "tts-1", "tts-1-hd")  # every name is Bark with Piper fallback


class SynthesizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="Text to speak; split into sentences, each spoken by Bark or, failing that, Piper.")
    voice: str | None = Field(None, description="A Bark preset or a Piper voice from GET /voices; "
                                                "default BARK_VOICE_PRESET.")
    speed: float = Field(1.0, ge=SPEED_RANGE[0], le=SPEED_RANGE[1], allow_inf_nan=False,
                         description="0.25..4, 2 = twice as fast. Bark has no tempo control: speed != 1 is "
                                     "spoken by Piper (fallback reason `unsupported`).")
    stream: bool = Field(False, description="false: one JSON answer with the whole WAV; true: NDJSON, one line "
                                            "per sentence as soon as it is spoken, then a `done` line.")
    format: Literal["wav"] = Field("wav", description="Audio encoding; only 16-bit PCM WAV (base64 in JSON).")


class SpeechBody(BaseModel):
    """OpenAI's POST /v1/audio/speech body. Fields OpenAI has and this service cannot honour are rejected."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str
    voice: str
    response_format: Literal["wav", "pcm"] = "wav"
    speed: float = Field(1.0, ge=SPEED_RANGE[0], le=SPEED_RANGE[1], allow_inf_nan=False)
    instructions: str | None = None
    stream_format: Literal["audio"] | None = None


def _b64_wav(audio: AudioSegment) -> str:
    return base64.b64encode(encode_wav(audio)).decode("ascii")


def _sentence_info(s: SpokenSentence) -> dict[str, Any]:
    info: dict[str, Any] = {"text": s.text, "engine": s.engine, "voice": s.voice}
    if s.fallback_reason:
        info["fallback_reason"] = s.fallback_reason
    info["duration_s"] = round(s.audio.duration_s, 4)
    return info


def answer_engine(spoken: list[SpokenSentence]) -> tuple[str, str]:
    """(engine, voice) of a whole answer: ("bark", preset) when Bark spoke every sentence, else ("piper",
    the Piper voice of the first sentence Piper spoke)."""
    first_piper = next((s for s in spoken if s.engine == "piper"), None)
    if first_piper is None:
        return "bark", spoken[0].voice
    return "piper", first_piper.voice


def create_app(settings: Settings, bark: SentenceTts | None = None, piper: PiperClient | None = None) -> FastAPI:
    """The service. ``bark`` defaults to `BarkEngine` (tests pass the real one on a tiny checkpoint, or a
    `FakeSentenceTts` for fallback logic); ``piper`` to a `PiperClient` of ``PIPER_FALLBACK_URL``."""
    tts = FallbackTts(settings, bark or BarkEngine(settings), piper or PiperClient(settings))
    rate = tts.sample_rate_hz
    router = APIRouter()

    async def first_and_rest(plan: Plan) -> tuple[SpokenSentence, AsyncIterator[SpokenSentence]]:
        """Speak the first sentence before any response starts (its errors are still status codes)."""
        stream = tts.speak_all(plan)
        try:
            first = await anext(stream)
        except BaseException:
            await stream.aclose()
            raise
        return first, stream

    @router.post("/synthesize", responses={200: {"content": {"application/json": {}, "application/x-ndjson": {}}}})
    async def synthesize(body: SynthesizeBody) -> Response:
        """Speak `text`, Bark first and Piper for every sentence Bark cannot speak. Non-streamed: JSON with the
        base64 WAV (sentences joined by 0.25 s of silence), `engine` ("bark" only when Bark spoke every
        sentence), `voice` and per-sentence details; headers X-TTS-Engine, X-TTS-Voice, X-Sample-Rate.
        Streamed (`stream: true`): NDJSON, one line per sentence, then `{"done": true, ...}`."""
        plan = await tts.plan(body.text, body.voice, body.speed)
        first, rest = await first_and_rest(plan)
        if not body.stream:
            spoken = [first]
            try:
                spoken.extend([s async for s in rest])
            finally:
                await rest.aclose()
            audio = join_sentences([s.audio for s in spoken], rate)
            engine, voice = answer_engine(spoken)
            payload = {"audio": _b64_wav(audio), "format": "wav", "sample_rate": rate,
                       "duration_s": round(audio.duration_s, 4), "engine": engine, "voice": voice,
                       "sentences": [_sentence_info(s) for s in spoken]}
            return JSONResponse(payload, headers={"X-TTS-Engine": engine, "X-TTS-Voice": voice,
                                                  "X-Sample-Rate": str(rate)})

        def line(s: SpokenSentence) -> bytes:
            return _ndjson({"index": s.index, **_sentence_info(s), "sample_rate": rate, "audio": _b64_wav(s.audio)})

        async def lines() -> AsyncIterator[bytes]:
            spoken = [first]
            try:
                yield line(first)
                async for s in rest:
                    spoken.append(s)
                    yield line(s)
            except ServiceError as exc:  # after the first line the status is sent: the error is the last line
                yield _ndjson(exc.body(context.get_correlation_id()))
                return
            finally:
                await rest.aclose()
            engine, voice = answer_engine(spoken)
            yield _ndjson({"done": True, "engine": engine, "voice": voice, "sentences": len(spoken),
                           "duration_s": round(sum(s.audio.duration_s for s in spoken), 4)})

        return StreamingResponse(lines(), media_type="application/x-ndjson", headers={"X-Sample-Rate": str(rate)})

    @router.post("/v1/audio/speech", response_class=Response,
                 responses={200: {"content": {"audio/wav": {}, "audio/pcm": {}}}})
    async def speech(body: SpeechBody) -> Response:
        """OpenAI-compatible speech, streamed sentence by sentence: wav (at TTS_BARK_SAMPLE_RATE_HZ, streaming
        header) or pcm (24 kHz s16le, as OpenAI). X-TTS-Engine / X-TTS-Voice name the engine and voice of the
        first sentence (an answer is all-Bark only if no later sentence falls back; see the guide)."""
        if body.model not in OPENAI_MODELS:
            raise InvalidRequestError(f"model must be one of {', '.join(OPENAI_MODELS)} (all Bark with Piper "
                                      f"fallback), got {body.model!r}", param="model")
        if body.instructions:
            raise InvalidRequestError("instructions are not supported by Bark or Piper voices; omit them",
                                      param="instructions")
        plan = await tts.plan(body.input, body.voice, body.speed)
        first, rest = await first_and_rest(plan)
        out_rate = OPENAI_PCM_RATE if body.response_format == "pcm" else rate
        gap = np.zeros(int(round(SENTENCE_GAP_S * out_rate)), dtype=np.float32)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                if body.response_format == "wav":
                    yield streaming_wav_header(out_rate)
                yield first.audio.resample(out_rate).to_pcm16()
                async for s in rest:
                    yield AudioSegment(gap, out_rate).to_pcm16() + s.audio.resample(out_rate).to_pcm16()
            finally:
                await rest.aclose()

        media = "audio/wav" if body.response_format == "wav" else "audio/pcm"
        headers = {"X-TTS-Engine": first.engine, "X-TTS-Voice": first.voice, "X-Sample-Rate": str(out_rate),
                   "X-Audio-Channels": "1", "X-Audio-Format": "wav" if body.response_format == "wav" else "s16le"}
        return StreamingResponse(chunks(), media_type=media, headers=headers)

    @router.get("/voices")
    async def voices() -> dict:
        """Bark presets (with labels) and the Piper voices of the tts service (`piper_error` when it cannot
        be asked). `default` is BARK_VOICE_PRESET."""
        body: dict[str, Any] = {"default": settings.bark_voice_preset,
                                "bark": [{"name": v.name, "label": v.label} for v in tts.bark.voices()]}
        try:
            body["piper"] = await tts.piper.fetch_voices()
            body["piper_default"] = tts.piper.default_voice
        except ServiceError as exc:
            body["piper"] = []
            body["piper_error"] = exc.message
        return body

    app = create_service_app(
        settings,
        components=[tts],
        dependencies=[Dependency("tts", settings.piper_fallback_url, required=False, path="/health/ready")],
        routers=[router],
        title="tts-bark (Bark with Piper fallback)",
    )
    app.state.tts = tts
    return app


def _ndjson(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()
