"""tts routes: /synthesize, OpenAI-compatible /v1/audio/speech, /voices. Routes only: the engine
synthesizes, the runner keeps it off the event loop, the common audio kit encodes."""

from __future__ import annotations

import struct
import time
from collections.abc import AsyncIterator
from typing import Literal

import numpy as np
import soxr
from fastapi import APIRouter, FastAPI
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from services.common import metrics
from services.common.app import create_service_app
from services.common.audio import MEDIA_TYPES, AudioSegment, encode_audio
from services.common.errors import EngineNotReadyError, InvalidRequestError
from services.common.inference import InferenceRunner
from services.tts.engine import PiperEngine, SynthesisRequest, TtsEngine
from services.tts.settings import Settings

OPENAI_PCM_RATE = 24_000  # OpenAI's `pcm` is 24 kHz, 16-bit, mono, little-endian
OPENAI_MODELS = ("piper", "tts-1", "tts-1-hd")  # every name is served by Piper


class SynthesizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="Text to speak; split into sentences and streamed sentence by sentence.")
    voice: str | None = Field(None, description="Voice name from GET /voices; default TTS_VOICE.")
    speed: float | None = Field(None, description="0.25..4, 2 = twice as fast. Exclusive with length_scale.")
    length_scale: float | None = Field(None, description="Piper length scale 0.25..4, 2 = twice as slow.")
    noise_scale: float | None = Field(None, description="Piper noise scale 0..2 (voice variation).")
    noise_w: float | None = Field(None, description="Piper noise width 0..2 (timing variation).")
    format: Literal["wav", "pcm"] = Field("wav", description="wav, or raw 16-bit little-endian mono pcm.")
    stream: bool = Field(True, description="Stream sentence by sentence (WAV header with unknown length); "
                                           "false sends one complete WAV with exact sizes.")


class SpeechBody(BaseModel):
    """OpenAI's POST /v1/audio/speech body. Fields OpenAI has and Piper cannot honour are rejected."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str
    voice: str
    response_format: Literal["wav", "pcm", "mp3", "flac", "opus"] = "mp3"
    speed: float = Field(1.0)
    instructions: str | None = None
    stream_format: Literal["audio"] | None = None


def streaming_wav_header(rate: int, channels: int = 1, bits: int = 16) -> bytes:
    """A WAV header whose sizes say 'unknown length' (0xFFFFFFFF), as streaming WAV writers do."""
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate,
            rate * block, block, bits) + b"data" + struct.pack("<I", 0xFFFFFFFF))


def create_app(settings: Settings, engine: TtsEngine | None = None) -> FastAPI:
    engine = engine or PiperEngine(settings)
    runner = InferenceRunner.from_settings(engine.name, settings)
    router = APIRouter()

    async def sentences(req: SynthesisRequest) -> AsyncIterator[np.ndarray]:
        """Validate on the loop (cheap), then synthesize sentence by sentence off the loop.

        The first sentence is synthesized before the response starts, so every error (bad input, engine
        not ready, busy) is still a proper status code; later errors can only end the stream."""
        if not engine.ready():
            raise EngineNotReadyError(f"{engine.name} is still loading its voice; retry shortly", retry_after_s=2)
        engine.validate(req)
        t0 = time.perf_counter()
        stream = runner.iterate(engine.synthesize_sentences, req, operation="synthesize")
        first = await anext(stream)
        metrics.TTS_FIRST_CHUNK.labels(metrics.service(), engine.name).observe(time.perf_counter() - t0)

        async def rest() -> AsyncIterator[np.ndarray]:
            audio_s = 0.0
            rate = engine.sample_rate_for(req.voice)
            try:
                yield first
                audio_s += len(first) / rate
                async for chunk in stream:
                    audio_s += len(chunk) / rate
                    yield chunk
            finally:
                await stream.aclose()
                if audio_s > 0:
                    labels = (metrics.service(), engine.name, "synthesize")
                    metrics.AUDIO_SECONDS.labels(*labels).inc(audio_s)
                    metrics.REAL_TIME_FACTOR.labels(*labels).observe((time.perf_counter() - t0) / audio_s)

        return rest()

    def audio_headers(req: SynthesisRequest, rate: int, fmt: str) -> dict[str, str]:
        return {"X-Sample-Rate": str(rate), "X-Audio-Channels": "1", "X-Audio-Format": fmt,
                "X-TTS-Engine": engine.name, "X-TTS-Voice": engine.voice_info(req.voice).name}

    async def pcm_bytes(chunks: AsyncIterator[np.ndarray], in_rate: int, out_rate: int) -> AsyncIterator[bytes]:
        resampler = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16") if in_rate != out_rate else None
        async for chunk in chunks:
            data = resampler.resample_chunk(chunk) if resampler else chunk
            if len(data):
                yield data.astype("<i2").tobytes()
        if resampler:
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            if len(tail):
                yield tail.astype("<i2").tobytes()

    async def whole(chunks: AsyncIterator[np.ndarray]) -> np.ndarray:
        parts = [c async for c in chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    async def respond(req: SynthesisRequest, fmt: str, *, stream: bool, out_rate: int | None = None) -> Response:
        rate = engine.sample_rate_for(req.voice)
        chunks = await sentences(req)
        if fmt == "pcm":
            target = out_rate or rate
            return StreamingResponse(pcm_bytes(chunks, rate, target), media_type="audio/pcm",
                                     headers=audio_headers(req, target, "s16le"))
        if fmt == "wav" and stream:
            async def wav() -> AsyncIterator[bytes]:
                yield streaming_wav_header(rate)
                async for data in pcm_bytes(chunks, rate, rate):
                    yield data

            return StreamingResponse(wav(), media_type="audio/wav", headers=audio_headers(req, rate, "wav"))
        segment = AudioSegment.from_pcm16((await whole(chunks)).astype("<i2").tobytes(), rate)
        if fmt == "opus":  # Ogg Opus only takes 8/12/16/24/48 kHz
            segment = segment.resample(48_000)
            body = encode_audio(segment, "ogg", subtype="opus")
        else:
            body = encode_audio(segment, fmt)
        media = "audio/ogg" if fmt == "opus" else MEDIA_TYPES[fmt]
        return Response(body, media_type=media, headers=audio_headers(req, segment.sample_rate, fmt))

    @router.post("/synthesize", response_class=Response, responses={200: {"content": {"audio/wav": {}, "audio/pcm": {}}}})
    async def synthesize(body: SynthesizeBody) -> Response:
        """Speak `text`. Sample rate, channels and sample format are in X-Sample-Rate, X-Audio-Channels,
        X-Audio-Format; engine and voice in X-TTS-Engine and X-TTS-Voice."""
        req = SynthesisRequest(text=body.text, voice=body.voice, speed=body.speed, length_scale=body.length_scale,
                               noise_scale=body.noise_scale, noise_w=body.noise_w)
        return await respond(req, body.format, stream=body.stream)

    @router.post("/v1/audio/speech", response_class=Response)
    async def speech(body: SpeechBody) -> Response:
        """OpenAI-compatible speech. wav and pcm (24 kHz, as OpenAI) stream sentence by sentence;
        mp3, flac and opus (Ogg) are sent once the whole text is spoken."""
        if body.model not in OPENAI_MODELS:
            raise InvalidRequestError(f"model must be one of {', '.join(OPENAI_MODELS)} (all served by Piper), "
                                      f"got {body.model!r}", param="model")
        if body.instructions:
            raise InvalidRequestError("instructions are not supported by Piper voices; omit them", param="instructions")
        req = SynthesisRequest(text=body.input, voice=body.voice, speed=body.speed)
        out_rate = OPENAI_PCM_RATE if body.response_format == "pcm" else None
        return await respond(req, body.response_format, stream=True, out_rate=out_rate)

    @router.get("/voices")
    async def voices() -> dict:
        """Every voice this service can speak with; `default` is TTS_VOICE."""
        return {"default": engine.default_voice,
                "voices": [{"name": v.name, "language": v.language, "quality": v.quality,
                            "sample_rate_hz": v.sample_rate_hz, "speakers": list(v.speakers)} for v in engine.voices()]}

    app = create_service_app(settings, components=[engine], routers=[router], title="tts (Piper)")
    app.state.engine = engine
    app.state.runner = runner
    return app
