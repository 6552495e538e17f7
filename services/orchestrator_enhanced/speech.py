"""Speech around the agent: denoise (audio-preprocessor), transcribe (stt), speak (tts-bark, then tts).

- `Speech.preprocess`: POST /denoise (which returns clean recordings unchanged, ``X-Denoised: false``); when it
  fails the raw audio is used (``orchestrator_fallbacks_total
  {stage="preprocess"}``) — a voice turn never fails because denoising did.
- `Speech.transcribe`: POST stt /transcribe with ``preprocess=false`` (the orchestrator denoised already, or
  was told not to), within what is left of the turn. stt failing fails the turn with the upstream's error
  (there is nothing to answer).
- `Speech.synthesize`: the primary TTS (tts-bark ``POST /synthesize``, JSON with base64 WAV; or a Piper tts, WAV,
  as the plain orchestrator of the base fleet has it) within
  ``min(TTS_PRIMARY_TIMEOUT_S, 60 % of the turn's time left)``, then the fallback TTS (tts ``POST /synthesize``,
  WAV) with the rest. Both clients have circuit breakers, so a primary that is down costs nothing after a few
  failures and is probed again after ``BREAKER_RESET_S``. Counted in ``engine_fallbacks_total`` and
  ``orchestrator_fallbacks_total{stage="tts"}``.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

from services.common import context
from services.common.errors import DeadlineExceededError, ServiceError, UpstreamFailedError
from services.common.http import ServiceClient, fallback_reason
from services.common.metrics import FALLBACKS, ORCH_FALLBACKS, service
from services.orchestrator_enhanced.settings import Settings

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None
    duration_s: float


@dataclass(frozen=True)
class SpokenAudio:
    wav: bytes
    service: str
    """The TTS service that answered: ``tts-bark`` or ``tts``."""
    engine: str
    """The voice engine that spoke: ``bark`` or ``piper``."""


class Speech:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.preprocessor = ServiceClient.from_settings("audio-preprocessor", settings.preprocessor_url, settings)
        self.stt = ServiceClient.from_settings("stt", settings.stt_url, settings)
        self.tts_primary = ServiceClient.from_settings("tts-bark", settings.tts_primary_url, settings)
        self.tts_fallback = (ServiceClient.from_settings("tts", settings.tts_fallback_url, settings)
                             if settings.tts_fallback_url else None)

    async def preprocess(self, audio: bytes) -> tuple[bytes, bool]:
        """(audio to transcribe, whether it was denoised)."""
        try:
            r = await self.preprocessor.post("/denoise", files={"file": ("audio", audio)}, idempotent=True)
        except ServiceError as exc:
            reason = fallback_reason(exc)
            ORCH_FALLBACKS.labels(service(), "preprocess", reason).inc()
            FALLBACKS.labels(service(), "audio-preprocessor", "raw-audio", reason).inc()
            log.warning("denoising failed (%s), transcribing the raw audio: %s", reason, exc.message)
            return audio, False
        return r.content, r.headers.get("X-Denoised", "true") != "false"

    async def transcribe(self, audio: bytes) -> Transcript:
        # no fallback for stt: it may use what is left of the turn (HTTP_TIMEOUT_S would cut it short when
        # stt queues under load)
        r = await self.stt.post("/transcribe", files={"file": ("audio", audio)}, data={"preprocess": "false"},
                                idempotent=True, timeout_s=self.settings.request_timeout_s)
        body = r.json()
        return Transcript(text=str(body.get("text") or "").strip(), language=body.get("language"),
                          duration_s=float(body.get("duration") or 0.0))

    async def synthesize(self, text: str, voice: str | None = None) -> SpokenAudio:
        """WAV of ``text`` from the primary TTS in ``voice`` (default TTS_VOICE), else the fallback in its own
        voice (see the module docstring)."""
        try:
            return await self._primary(text, voice)
        except ServiceError as exc:
            if self.tts_fallback is None:
                raise
            first = exc
        reason = fallback_reason(first)
        log.warning("primary TTS failed (%s), speaking with the fallback: %s", reason, first.message)
        try:
            r = await self.tts_fallback.post("/synthesize", json={"text": text, "stream": False, "format": "wav"},
                                             idempotent=True, timeout_s=self.settings.request_timeout_s)
        except ServiceError as second:
            second.message = f"tts-bark failed ({first.message}); fallback tts failed ({second.message})"
            second.args = (second.message,)
            raise
        FALLBACKS.labels(service(), "tts-bark", "tts", reason).inc()
        ORCH_FALLBACKS.labels(service(), "tts", reason).inc()
        return SpokenAudio(r.content, "tts", "piper")

    async def _primary(self, text: str, voice: str | None) -> SpokenAudio:
        deadline = context.get_deadline()
        left = deadline.remaining() if deadline is not None else None
        if left is not None and left <= 0:
            raise DeadlineExceededError("the turn's deadline passed before speaking")
        budget = self.settings.tts_primary_timeout_s
        if self.tts_fallback is not None:
            budget = context.primary_budget(budget)
        body: dict[str, object] = {"text": text, "stream": False}
        if voice or self.settings.tts_voice:
            body["voice"] = voice or self.settings.tts_voice
        r = await self.tts_primary.post("/synthesize", json=body, timeout_s=budget, idempotent=True)
        if r.headers.get("content-type", "").startswith("audio/"):  # a Piper tts as the primary (base fleet)
            return SpokenAudio(r.content, "tts", "piper")
        try:
            data = r.json()
            wav = base64.b64decode(data["audio"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamFailedError(f"tts-bark: answer without base64 audio ({type(exc).__name__})") from exc
        return SpokenAudio(wav, "tts-bark", str(data.get("engine") or "bark"))
