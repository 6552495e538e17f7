"""stt routes: /transcribe and OpenAI-compatible /v1/audio/transcriptions. Routes only: the common audio
kit decodes, the engine transcribes off the loop through the runner, the optional preprocessor denoises."""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from services.common import metrics
from services.common.app import Dependency, create_service_app
from services.common.audio import AudioSegment, decode_audio
from services.common.errors import EngineNotReadyError, InvalidRequestError, PayloadTooLargeError, ServiceError
from services.common.http import ServiceClient, fallback_reason
from services.common.inference import InferenceRunner
from services.stt.engine import SttEngine, Transcript, TranscriptionRequest, WhisperEngine, to_srt, to_vtt
from services.stt.settings import Settings

log = logging.getLogger(__name__)

OPENAI_MODELS = ("whisper-1",)  # plus the configured model's own name
RAW = "raw-audio"


def _segments_json(t: Transcript, *, words: bool, openai_fields: bool = False) -> list[dict[str, Any]]:
    out = []
    for s in t.segments:
        item: dict[str, Any] = {"id": s.id, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
                                "avg_logprob": s.avg_logprob, "no_speech_prob": s.no_speech_prob}
        if openai_fields:
            item.update(seek=s.seek, tokens=list(s.tokens), temperature=s.temperature,
                        compression_ratio=s.compression_ratio)
        if words and s.words is not None:
            item["words"] = [{"start": round(w.start, 3), "end": round(w.end, 3), "word": w.word,
                              "probability": w.probability} for w in s.words]
        out.append(item)
    return out


def create_app(settings: Settings, engine: SttEngine | None = None) -> FastAPI:
    engine = engine or WhisperEngine(settings)
    runner = InferenceRunner.from_settings(engine.name, settings)
    preprocessor = ServiceClient.from_settings("audio-preprocessor", settings.preprocessor_url, settings)
    router = APIRouter()

    async def read_upload(file: UploadFile) -> bytes:
        limit = settings.stt_max_upload_bytes
        if file.size is not None and file.size > limit:
            raise PayloadTooLargeError(f"upload is {file.size} bytes; the limit is {limit} bytes", param="file")
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLargeError(f"upload is over the limit of {limit} bytes", param="file")
        return data

    async def denoise(raw: bytes, audio: AudioSegment, enabled: bool) -> tuple[AudioSegment, bool]:
        """Audio through audio-preprocessor /denoise when enabled; the raw audio when it is down, slow,
        failing or answers with something unusable (counted in
        engine_fallbacks_total{engine_from="audio-preprocessor", engine_to="raw-audio"})."""
        if not enabled:
            return audio, False
        try:
            r = await preprocessor.post("/denoise", files={"file": ("audio", raw)},
                                        timeout_s=settings.preprocessor_timeout_s)
            return decode_audio(r.content, max_bytes=2 * settings.stt_max_upload_bytes + 1_000_000,
                                max_duration_s=settings.stt_max_audio_s), True
        except ServiceError as exc:  # unreachable, timeout, error answer, or audio that does not decode
            reason = fallback_reason(exc) if not isinstance(exc, InvalidRequestError) else "error"
            metrics.FALLBACKS.labels(metrics.service(), "audio-preprocessor", RAW, reason).inc()
            log.warning("preprocessing failed (%s), transcribing raw audio: %s", reason, exc.message)
            return audio, False

    async def transcribe(file: UploadFile, *, language: str | None, prompt: str | None, temperature: float | None,
                         word_timestamps: bool, beam_size: int | None = None,
                         preprocess: bool | None = None) -> tuple[Transcript, bool]:
        if not engine.ready():
            raise EngineNotReadyError(f"{engine.name} is still loading its model; retry shortly", retry_after_s=2)
        raw = await read_upload(file)
        # decode first: bad input is a 4xx before any call to the preprocessor
        audio = decode_audio(raw, max_bytes=settings.stt_max_upload_bytes, max_duration_s=settings.stt_max_audio_s)
        req = TranscriptionRequest(audio=audio, language=language or None, prompt=prompt or None,
                                   temperature=temperature, word_timestamps=word_timestamps, beam_size=beam_size)
        engine.validate(req)  # cheap checks on the loop, before the preprocessor and before queueing
        enabled = settings.enable_preprocessing if preprocess is None else preprocess
        audio, preprocessed = await denoise(raw, audio, enabled)
        req = dataclasses.replace(req, audio=audio)
        result = await runner.run(engine.transcribe, req, operation="transcribe")
        labels = (metrics.service(), engine.name, "transcribe")
        metrics.AUDIO_SECONDS.labels(*labels).inc(result.duration_s)
        if result.duration_s > 0:
            metrics.REAL_TIME_FACTOR.labels(*labels).observe(result.processing_s / result.duration_s)
        return result, preprocessed

    @router.post("/transcribe")
    async def transcribe_route(
        file: Annotated[UploadFile | None, File(description="Audio: WAV, FLAC, OGG or MP3, any rate/channels.")] = None,
        audio: Annotated[UploadFile | None, File(description="Alias of `file` (the plan's field name).")] = None,
        language: Annotated[str | None, Form(description="ISO-639-1 code; empty = detect.")] = None,
        prompt: Annotated[str | None, Form(description="Text to condition the decoder (names, spelling).")] = None,
        temperature: Annotated[float | None, Form(
            description="0..1. Omitted or 0: whisper's fallback schedule (0, 0.2, ... 1.0); t > 0 samples at t.")] = None,
        word_timestamps: Annotated[bool, Form()] = False,
        beam_size: Annotated[int | None, Form(description="1..10; default STT_BEAM_SIZE.")] = None,
        preprocess: Annotated[bool | None, Form(
            description="Denoise through audio-preprocessor first (true/false); omitted = ENABLE_PREPROCESSING. "
                        "A caller that denoised already (the orchestrator) sends false.")] = None,
    ) -> dict[str, Any]:
        """Transcribe one audio file. Returns text, language, duration, segments and processing time."""
        upload = file or audio
        if upload is None or (file is not None and audio is not None):
            raise InvalidRequestError("send the audio as exactly one multipart field, `file` (or `audio`)",
                                      param="file")
        t, preprocessed = await transcribe(upload, language=language, prompt=prompt, temperature=temperature,
                                           word_timestamps=word_timestamps, beam_size=beam_size,
                                           preprocess=preprocess)
        return {"text": t.text, "language": t.language, "language_probability": t.language_probability,
                "duration": round(t.duration_s, 3), "processing_time": round(t.processing_s, 3), "model": t.model,
                "preprocessed": preprocessed, "segments": _segments_json(t, words=word_timestamps)}

    @router.post("/v1/audio/transcriptions")
    async def openai_transcriptions(
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[Literal["json", "text", "verbose_json", "srt", "vtt"], Form()] = "json",
        temperature: Annotated[float | None, Form()] = None,
        timestamp_granularities: Annotated[list[Literal["word", "segment"]] | None,
                                           Form(alias="timestamp_granularities[]")] = None,
    ) -> Response:
        """OpenAI-compatible transcription (the `openai` client's audio.transcriptions.create)."""
        accepted = (*OPENAI_MODELS, engine.model_name)
        if model not in accepted:
            raise InvalidRequestError(f"model must be one of {', '.join(accepted)}, got {model!r}", param="model")
        granularities = set(timestamp_granularities or [])
        if granularities and response_format != "verbose_json":
            raise InvalidRequestError("timestamp_granularities needs response_format=verbose_json",
                                      param="timestamp_granularities")
        t, _ = await transcribe(file, language=language, prompt=prompt, temperature=temperature,
                                word_timestamps="word" in granularities)
        if response_format == "text":
            return PlainTextResponse(t.text)
        if response_format == "srt":
            return PlainTextResponse(to_srt(t.segments))
        if response_format == "vtt":
            return PlainTextResponse(to_vtt(t.segments), media_type="text/vtt")
        if response_format == "json":
            return JSONResponse({"text": t.text})
        body: dict[str, Any] = {"task": "transcribe", "language": t.language, "duration": round(t.duration_s, 3),
                                "text": t.text}
        if not granularities or "segment" in granularities:
            body["segments"] = _segments_json(t, words=False, openai_fields=True)
        if "word" in granularities:
            body["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
                             for s in t.segments for w in (s.words or [])]
        return JSONResponse(body)

    deps = ([Dependency("audio-preprocessor", settings.preprocessor_url, required=False)]
            if settings.enable_preprocessing else [])
    app = create_service_app(settings, components=[engine], dependencies=deps, routers=[router],
                             title="stt (faster-whisper)")
    app.state.engine = engine
    app.state.runner = runner
    return app

