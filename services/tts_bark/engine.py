"""Synthesis layer of tts-bark: Bark voices, the Piper service as fallback, and the chain of the two.

No HTTP routes here. Everything speaks one *sentence* at a time through the `SentenceTts` protocol:

- `BarkEngine`: transformers' ``BarkModel`` + ``BarkProcessor`` (suno/bark, suno/bark-small or a local dir),
  loaded off the loop by `load_in_thread`, generating off the loop through an `InferenceRunner`.
- `PiperClient`: the tts service's ``POST /synthesize`` (``stream: false``, ``format: wav``) through the
  common `ServiceClient` (auth, correlation id, deadline, circuit breaker).
- `FallbackTts`: itself a `SentenceTts`. Per sentence, Bark first when it is ready and the voice is a Bark
  preset; on not-ready, error, timeout or an unsupported option the *same sentence* goes to Piper, so a long
  answer never loses a part. Every switch is logged and counted in
  ``engine_fallbacks_total{engine_from="bark",engine_to="piper",reason}``.

Bark facts this module relies on (transformers 5.x, ``models/bark``):

- ``BarkModel.generate(input_ids, attention_mask, history_prompt, ...)`` runs semantic -> coarse -> fine ->
  EnCodec and returns float audio ``(batch, samples)`` at ``generation_config.sample_rate`` (24 kHz). Keyword
  arguments prefixed ``semantic_``/``coarse_``/``fine_`` go to that stage only.
- The semantic stage makes at most ``semantic_config["max_new_tokens"]`` tokens (768 at 49.9 Hz: ~15 s); text
  beyond ``max_input_semantic_length`` tokens (256) is dropped. Hence one sentence per call, and long sentences
  cut to `Settings.bark_max_sentence_chars`.
- The nested generation config lives in ``generation_config.json``; after ``from_pretrained`` it is a plain
  ``GenerationConfig`` whose ``semantic_config`` etc. are dicts (``BarkModel.generate`` reads them so).
- Voice presets come from ``speaker_embeddings_path.json`` beside the weights (``BarkProcessor``): per preset a
  1-D semantic prompt, a (2, T) coarse prompt and an (8, T) fine prompt. We read each English v2 preset once
  at load and keep its tensors on the model's device.
- Bark's attention in transformers 5 is ``eager`` or ``flash_attention_2`` (there is no SDPA class for Bark):
  on CUDA we load fp16 with flash-attention 2 when the ``flash_attn`` package is installed, else eager fp16.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx
import numpy as np

from services.common import context, metrics
from services.common.audio import AudioSegment, decode_audio
from services.common.errors import (
    BusyError,
    DeadlineExceededError,
    EngineFailedError,
    EngineNotReadyError,
    InvalidRequestError,
    ServiceError,
    UpstreamFailedError,
    UpstreamUnavailableError,
)
from services.common.http import ServiceClient, shared_async_client
from services.common.hub import ModelNotFoundError, is_local_path, resolve_model_dir
from services.common.inference import InferenceRunner, load_in_thread
from services.tts.engine import split_sentences as _split_sentences
from services.tts_bark.settings import BARK_PRESET, Settings

log = logging.getLogger(__name__)

# --- voices and constants ------------------------------------------------------------------------------------

BARK_VOICE_LABELS = {
    "v2/en_speaker_0": "Male voice",
    "v2/en_speaker_1": "Female voice",
    "v2/en_speaker_2": "Male with accent",
    "v2/en_speaker_3": "Female expressive",
    "v2/en_speaker_6": "Male deep",
}
"""The plan's descriptions of the presets it lists; the other English presets are "English speaker N"."""

STANDARD_BARK_VOICES = tuple(f"v2/en_speaker_{i}" for i in range(10))
"""suno's English v2 presets: the voices offered before Bark has loaded (afterwards: those the checkpoint has)."""

SPEED_RANGE = (0.25, 4.0)
"""Accepted ``speed`` (OpenAI's range). Bark has no tempo control: speed != 1 is spoken by Piper."""

SENTENCE_GAP_S = 0.25
"""Silence put between sentences when they are joined into one answer (Bark's own long-form recipe)."""

SEMANTIC_TEMPERATURE = 0.7
COARSE_TEMPERATURE = 0.7
FINE_TEMPERATURE = 0.5
MIN_EOS_P = 0.2
"""Sampling as suno's ``generate_audio`` does it (text_temp 0.7, waveform_temp 0.7, fine 0.5, min_eos_p 0.2);
greedy Bark tends to loop."""

HF_PATTERNS = ("*.json", "*.txt", "*.safetensors", "speaker_embeddings/v2/en_speaker_*")
"""Files fetched from a hub checkpoint: configs, tokenizer, safetensors weights, the English v2 presets.
``pytorch_model.bin`` is fetched only when the repository has no safetensors."""

FALLBACK_REASONS = ("not_ready", "error", "timeout", "busy", "unsupported")
"""``reason`` label values of ``engine_fallbacks_total`` for bark -> piper: Bark not loaded; Bark raised;
Bark past `Settings.bark_sentence_timeout_s` (or an earlier sentence of the answer was); Bark's queue full;
an option Bark cannot honour (``speed`` != 1)."""


def bark_voice_label(name: str) -> str:
    """The plan's label of a preset, else ``English speaker N``."""
    if name in BARK_VOICE_LABELS:
        return BARK_VOICE_LABELS[name]
    return f"English speaker {name.rsplit('_', 1)[-1]}"


@dataclass(frozen=True)
class Voice:
    """A voice a request may name."""

    name: str
    """What requests put in ``voice``: a Bark preset (``v2/en_speaker_1``) or a Piper voice name."""
    label: str
    """Human description (the plan's for Bark presets; the name for Piper voices)."""
    engine: str
    """``bark`` or ``piper``."""


def split_sentences(text: str, max_chars: int) -> list[str]:
    """The pieces spoken one at a time: the tts service's sentence splitter (sentence ends, not after
    "Dr." or inside "3.5"; every line break), with pieces over ``max_chars`` cut at the last comma, colon or
    dash, else at whitespace. Nothing is dropped."""
    return _split_sentences(text, max_chars=max_chars)


def _speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def check_speed(speed: Any) -> float:
    """``speed`` as a float in `SPEED_RANGE`, else InvalidRequestError."""
    lo, hi = SPEED_RANGE
    ok = isinstance(speed, (int, float)) and not isinstance(speed, bool) and math.isfinite(speed)
    if not ok or not lo <= speed <= hi:
        raise InvalidRequestError(f"speed must be a number between {lo:g} and {hi:g}, got {speed!r}", param="speed")
    return float(speed)


# --- the protocol --------------------------------------------------------------------------------------------


@runtime_checkable
class SentenceTts(Protocol):
    """Speaks one sentence at a time (also a `services.common.app.Component`)."""

    name: str
    """Engine name for logs, metrics and /health/ready (``bark``, ``piper``, ``tts-bark``)."""

    async def start(self) -> None:
        """Load weights / reach the backend. Ready afterwards (or raises with the reason)."""
        ...

    def ready(self) -> bool:
        """True when `synthesize` can be expected to work; a flag, no inference behind it."""
        ...

    async def aclose(self) -> None:
        """Release models and tasks; not ready afterwards."""
        ...

    def describe(self) -> dict[str, Any]:
        """Engine facts for /health/ready."""
        ...

    def voices(self) -> list[Voice]:
        """The voices `synthesize` accepts (no model is loaded and no network is used for this)."""
        ...

    async def synthesize(self, sentence: str, voice: str | None, speed: float = 1.0) -> AudioSegment:
        """Mono audio of one sentence; ``voice`` None = the engine's default. Raises `ServiceError`s:
        `InvalidRequestError` for what the engine cannot do (unknown voice, unsupported speed), retryable
        ones (`EngineNotReadyError`, `BusyError`, upstream errors) and `EngineFailedError`."""
        ...


# --- Bark ------------------------------------------------------------------------------------------------------


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


class _Cancelled(Exception):
    """Raised inside a Bark generation whose caller gave up (timeout, client gone): stops it at the next layer."""


def pick_device(setting: str) -> str:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cuda`` without a GPU is a start error."""
    if setting == "auto":
        return "cuda" if _cuda_available() else "cpu"
    if setting == "cuda" and not _cuda_available():
        raise RuntimeError("BARK_DEVICE=cuda but no CUDA device is visible to torch")
    return setting


def resolve_bark_dir(model: str, allow_download: bool) -> Path:
    """The checkpoint directory (local, cached or downloaded), checked for what `BarkEngine` loads."""
    required = ("config.json", "generation_config.json", "speaker_embeddings_path.json")
    directory = resolve_model_dir(model, allow_download=allow_download, required=required, allow_patterns=HF_PATTERNS)

    def has_weights(d: Path) -> bool:
        return any(d.glob("*.safetensors")) or (d / "pytorch_model.bin").is_file()

    if not is_local_path(model) and not has_weights(directory):
        directory = resolve_model_dir(model, allow_download=allow_download,
                                      allow_patterns=(*HF_PATTERNS, "pytorch_model.bin"))
    missing = [name for name in required if not (directory / name).is_file()]
    if not has_weights(directory):
        missing.append("weights (*.safetensors or pytorch_model.bin)")
    if missing:
        raise ModelNotFoundError(f"Bark checkpoint {model} ({directory}) lacks {', '.join(missing)}")
    return directory


class BarkEngine:
    """`SentenceTts` on transformers' Bark. One generate call per sentence, one at a time (the runner's
    ``MAX_CONCURRENCY`` threads, default 1), each bounded by the checkpoint's generation config. Cancelling
    `synthesize` (a sentence timeout) also stops its generation thread at the next transformer block, so an
    abandoned sentence does not keep the CPU/GPU busy."""

    name = "bark"

    def __init__(self, settings: Settings, runner: InferenceRunner | None = None) -> None:
        self.model_id = settings.bark_model_id()
        self.device_setting = settings.bark_device
        self.cpu_threads = settings.bark_cpu_threads
        self.allow_download = settings.bark_allow_download
        self.default_voice = settings.bark_voice_preset
        self.runner = runner or InferenceRunner.from_settings(self.name, settings)
        self.device = "cpu"
        self.dtype = "float32"
        self.attn_implementation = "eager"
        self.sample_rate_hz = 24_000
        self.max_semantic_tokens: int | None = None
        self._model: Any = None
        self._processor: Any = None
        self._presets: dict[str, dict[str, Any]] = {}
        self._max_input_tokens = 256
        self._loaded = False
        self._closed = False
        self._local = threading.local()  # the cancel flag of the generation running in this thread
        self.load_error: str | None = None
        self.load_seconds: float | None = None

    # -- lifecycle

    def _load(self) -> None:
        import torch
        from transformers import BarkModel, BarkProcessor

        t0 = time.perf_counter()
        self.device = pick_device(self.device_setting)
        if self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
        directory = resolve_bark_dir(self.model_id, self.allow_download)
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        attn = "flash_attention_2" if self.device == "cuda" and importlib.util.find_spec("flash_attn") else "eager"
        model = BarkModel.from_pretrained(directory, dtype=dtype, attn_implementation=attn)
        model = model.to(self.device).eval()
        gen = model.generation_config
        semantic = getattr(gen, "semantic_config", None)
        if not isinstance(semantic, dict) or not isinstance(getattr(gen, "coarse_acoustics_config", None), dict):
            raise RuntimeError(f"{directory}/generation_config.json is not a Bark generation config "
                               "(no semantic_config / coarse_acoustics_config)")
        processor = BarkProcessor.from_pretrained(directory)
        presets: dict[str, dict[str, Any]] = {}
        for preset in sorted(processor.available_voice_presets):
            if not BARK_PRESET.match(preset):
                continue
            try:  # reads and validates the three .npy prompts, as the processor does per call
                prompt = processor("a", voice_preset=preset)["history_prompt"]
            except (OSError, ValueError, TypeError) as exc:
                log.warning("skipping Bark preset %s: %s", preset, exc, extra={"engine": self.name})
                continue
            presets[preset] = {key: value.to(self.device) for key, value in prompt.items()}
        if self.default_voice not in presets:
            raise RuntimeError(f"BARK_VOICE_PRESET={self.default_voice} is not among the checkpoint's presets "
                               f"({', '.join(presets) or 'none'})")
        # A generation abandoned by its caller stops at the next transformer block / decoder call instead of
        # running to the end in its thread (hooks on blocks: the fine model calls its own forward directly).
        for stage in (model.semantic.layers[0], model.coarse_acoustics.layers[0], model.fine_acoustics.layers[0],
                      model.codec_model.decoder):
            stage.register_forward_pre_hook(self._check_cancel)
        self._model, self._processor, self._presets = model, processor, presets
        self._max_input_tokens = int(semantic.get("max_input_semantic_length", 256))
        self.max_semantic_tokens = semantic.get("max_new_tokens")
        self.sample_rate_hz = int(getattr(gen, "sample_rate", None) or model.config.codec_config.sampling_rate)
        self.dtype = str(dtype).removeprefix("torch.")
        self.attn_implementation = attn
        self.load_seconds = time.perf_counter() - t0
        log.info("bark %s loaded on %s (%s, %s attention) in %.1f s with %d presets", self.model_id, self.device,
                 self.dtype, attn, self.load_seconds, len(presets), extra={"engine": self.name})

    async def start(self) -> None:
        self._closed = False
        try:
            await load_in_thread(self._load)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            raise
        self.load_error = None
        self._loaded = True

    def ready(self) -> bool:
        return self._loaded and not self._closed

    async def aclose(self) -> None:
        self._closed = True
        self._loaded = False
        self._model = self._processor = None
        self._presets = {}

    def describe(self) -> dict[str, Any]:
        status = "ready" if self.ready() else (f"failed to load: {self.load_error}" if self.load_error else "loading")
        info: dict[str, Any] = {"engine": self.name, "model": self.model_id, "status": status,
                                "device": self.device, "sample_rate_hz": self.sample_rate_hz}
        if self.ready():
            info.update(dtype=self.dtype, attn_implementation=self.attn_implementation, voices=len(self._presets),
                        cpu_threads=self.cpu_threads or None,
                        max_semantic_tokens=self.max_semantic_tokens, load_s=round(self.load_seconds or 0, 2))
        return info

    def voices(self) -> list[Voice]:
        names = sorted(self._presets) if self.ready() else list(STANDARD_BARK_VOICES)
        return [Voice(name, bark_voice_label(name), self.name) for name in names]

    # -- synthesis

    def _check_cancel(self, _module: Any, _args: Any) -> None:
        cancel = getattr(self._local, "cancel", None)
        if cancel is not None and cancel.is_set():
            raise _Cancelled

    def _generate(self, sentence: str, voice: str, cancel: threading.Event | None = None) -> np.ndarray | None:
        """BLOCKING: one sentence -> float32 mono samples at `sample_rate_hz`. Setting ``cancel`` (from any
        thread) stops the generation at its next transformer block; it then returns None (its caller is gone:
        nobody would retrieve an exception)."""
        import torch

        model, processor, preset = self._model, self._processor, self._presets.get(voice)
        if model is None or preset is None:
            raise EngineNotReadyError("bark was unloaded")
        inputs = processor(sentence, max_length=self._max_input_tokens)
        self._local.cancel = cancel
        try:
            with torch.inference_mode():
                audio = model.generate(
                    input_ids=inputs["input_ids"].to(self.device),
                    attention_mask=inputs["attention_mask"].to(self.device),
                    history_prompt=preset,
                    do_sample=True,
                    semantic_temperature=SEMANTIC_TEMPERATURE,
                    coarse_temperature=COARSE_TEMPERATURE,
                    fine_temperature=FINE_TEMPERATURE,
                    min_eos_p=MIN_EOS_P,
                )
        except _Cancelled:
            log.info("bark generation cancelled: its caller gave up", extra={"engine": self.name})
            return None
        except Exception as exc:  # torch/transformers errors: this sentence failed, the engine may still work
            raise EngineFailedError(f"bark failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._local.cancel = None
        samples = audio[0].float().cpu().numpy()
        if samples.size == 0 or not np.isfinite(samples).all():
            raise EngineFailedError("bark produced no audio or non-finite samples")
        return np.clip(samples, -1.0, 1.0)

    async def synthesize(self, sentence: str, voice: str | None, speed: float = 1.0) -> AudioSegment:
        if speed != 1.0:
            raise InvalidRequestError("bark has no speed control; speed must be 1 (Piper speaks other speeds)",
                                      param="speed")
        if not self.ready():
            reason = f"failed to load: {self.load_error}" if self.load_error else "still loading"
            raise EngineNotReadyError(f"bark is not ready ({reason})", retry_after_s=5)
        name = voice or self.default_voice
        if name not in self._presets:
            raise InvalidRequestError(f"unknown Bark voice {name!r}; available: {', '.join(sorted(self._presets))}",
                                      param="voice")
        cancel = threading.Event()
        try:
            samples = await self.runner.run(self._generate, sentence, name, cancel, operation="synthesize")
        except asyncio.CancelledError:  # the caller gave up (sentence timeout, client gone): stop the thread too
            cancel.set()
            raise
        if samples is None:
            raise EngineFailedError("bark generation was cancelled")
        return AudioSegment(samples, self.sample_rate_hz)


# --- Piper (the tts service) -------------------------------------------------------------------------------------


class PiperClient:
    """`SentenceTts` over HTTP: the tts service's ``POST /synthesize`` with ``stream: false, format: wav``.

    Readiness is the tts service's ``/health/ready``, probed at start and every ``DEPENDENCY_POLL_S`` (and
    updated by every call). Its voices (``GET /voices``) are cached and refreshed when a request names a voice
    not in the cache, and by `fetch_voices`.
    """

    name = "piper"
    target = "tts"
    """``target`` label of the client metrics and the circuit breaker: the service called."""

    def __init__(self, settings: Settings, client: ServiceClient | None = None) -> None:
        self.url = settings.piper_fallback_url
        self.client = client or ServiceClient.from_settings(self.target, self.url, settings)
        self.timeout_s = settings.piper_timeout_s
        self.poll_s = settings.dependency_poll_s
        self._reachable = False
        self.detail = "not probed yet"
        self._voices: list[str] = []
        self.default_voice: str | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle

    async def probe(self) -> bool:
        """GET /health/ready of the tts service (no retries, at most 2 s); refreshes the voice cache when up."""
        try:
            r = await shared_async_client().get(f"{self.url}/health/ready", timeout=min(2.0, self.poll_s))
            up, self.detail = r.status_code == 200, f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            up, self.detail = False, f"unreachable: {type(exc).__name__}"
        self._reachable = up
        if up and not self._voices:
            try:
                await self.fetch_voices()
            except ServiceError as exc:
                log.info("piper voices not available yet: %s", exc.message, extra={"engine": self.name})
        return up

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self.probe()

    async def start(self) -> None:
        await self.probe()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll(), name="piper-probe")

    def ready(self) -> bool:
        return self._reachable

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._reachable = False

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "url": self.url, "reachable": self._reachable, "detail": self.detail,
                "default_voice": self.default_voice, "voices": len(self._voices)}

    # -- voices

    def voices(self) -> list[Voice]:
        return [Voice(name, name, self.name) for name in self._voices]

    async def fetch_voices(self) -> list[str]:
        """The tts service's voice names (GET /voices), cached; raises `ServiceError` when it cannot answer."""
        r = await self.client.get("/voices", timeout_s=min(self.timeout_s, 5.0))
        try:
            body = r.json()
            names = sorted(str(v["name"]) for v in body["voices"])
            default = body.get("default")
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamFailedError(f"{self.target}: GET /voices answered an unexpected body ({exc!r})") from exc
        self._voices, self.default_voice = names, (str(default) if default else None)
        self._reachable = True
        return names

    async def has_voice(self, voice: str) -> bool:
        """Is ``voice`` a Piper voice? Asks the tts service when the cache does not know it (raises
        `ServiceError` when it cannot be asked)."""
        if voice in self._voices:
            return True
        try:
            await self.fetch_voices()
        except (UpstreamUnavailableError, DeadlineExceededError):
            self._reachable = False
            raise
        return voice in self._voices

    # -- synthesis

    async def synthesize_voiced(self, sentence: str, voice: str | None, speed: float = 1.0) -> tuple[AudioSegment, str]:
        """One sentence from the tts service: its audio (22.05 kHz for the bundled voice) and the voice used."""
        body: dict[str, Any] = {"text": sentence, "format": "wav", "stream": False}
        if voice:
            body["voice"] = voice
        if speed != 1.0:
            body["speed"] = speed
        try:
            r = await self.client.post("/synthesize", json=body, timeout_s=self.timeout_s)
        except UpstreamFailedError as exc:
            if exc.upstream_status == 422:  # the request itself is refused: the caller's fault, not Piper's
                raise InvalidRequestError(exc.message, param=None) from exc
            raise
        except (UpstreamUnavailableError, DeadlineExceededError):
            self._reachable = False
            raise
        self._reachable = True
        try:
            audio = decode_audio(r.content)
        except ServiceError as exc:
            raise UpstreamFailedError(f"{self.target}: /synthesize answered undecodable audio ({exc.message})") from exc
        used = r.headers.get("x-tts-voice") or voice or self.default_voice or "default"
        return audio.to_mono(), used

    async def synthesize(self, sentence: str, voice: str | None, speed: float = 1.0) -> AudioSegment:
        return (await self.synthesize_voiced(sentence, voice, speed))[0]


# --- the chain ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpokenSentence:
    """One sentence of an answer as it was spoken."""

    index: int
    """Position in the answer, from 0."""
    text: str
    """The text spoken."""
    audio: AudioSegment
    """Mono audio at the chain's output rate."""
    engine: str
    """``bark`` or ``piper``."""
    voice: str
    """The voice used: the Bark preset, or the Piper voice (Piper's default when a Bark voice fell back)."""
    fallback_reason: str | None = None
    """Why a sentence meant for Bark was spoken by Piper (`FALLBACK_REASONS`); None when Bark spoke it or
    the request named a Piper voice."""


@dataclass(frozen=True)
class Plan:
    """A validated request: what to say, with which voice, at which speed."""

    sentences: tuple[str, ...]
    voice: str
    """The resolved voice name (a Bark preset or a Piper voice)."""
    bark: bool
    """True when ``voice`` is a Bark preset (Bark first, Piper as fallback); False: Piper voice, Piper only."""
    speed: float = 1.0


class FallbackTts:
    """Bark, then Piper, per sentence. Itself a `SentenceTts` (the app's one component).

    - Ready when either can answer: Bark loaded, or the tts service reachable. A Bark that fails to load is
      reported in `describe` (and /health/ready) while Piper serves.
    - Bark gets at most ``BARK_SENTENCE_TIMEOUT_S`` per sentence (less when the request's deadline is nearer,
      keeping time for Piper); its generation is then cancelled. A Bark timeout sends the rest of that answer
      to Piper as well (reason ``timeout``): Bark is too slow right now, and waiting the full timeout again
      for every sentence would stall the answer.
    - Bark errors, a full Bark queue, Bark not ready and ``speed`` != 1 send that sentence to Piper (with
      Piper's default voice); the next sentence tries Bark again.
    - When Piper fails too, one error names both failures: 503 when the tts service is unreachable, 504 past
      the deadline, 502 when it answered an error.
    - All audio leaves at one rate (``TTS_BARK_SAMPLE_RATE_HZ``), resampled with soxr.
    """

    name = "tts-bark"

    def __init__(self, settings: Settings, bark: SentenceTts, piper: PiperClient) -> None:
        self.bark = bark
        self.piper = piper
        self.sample_rate_hz = settings.tts_bark_sample_rate_hz
        self.default_voice = settings.bark_voice_preset
        self.bark_timeout_s = settings.bark_sentence_timeout_s
        self.piper_timeout_s = settings.piper_timeout_s
        self.max_text_chars = settings.bark_max_text_chars
        self.max_sentence_chars = settings.bark_max_sentence_chars
        self.bark_error: str | None = None

    # -- lifecycle

    async def start(self) -> None:
        """Reach Piper, then load Bark. A Bark load failure is kept (for /health/ready), not raised: Piper serves."""
        await self.piper.start()
        try:
            await self.bark.start()
        except Exception as exc:
            self.bark_error = f"{type(exc).__name__}: {exc}"
            log.warning("bark did not load; every sentence goes to piper: %s", self.bark_error,
                        extra={"engine": self.bark.name})
        else:
            self.bark_error = None

    def ready(self) -> bool:
        return self.bark.ready() or self.piper.ready()

    async def aclose(self) -> None:
        await self.bark.aclose()
        await self.piper.aclose()

    def describe(self) -> dict[str, Any]:
        bark_ok = self.bark.ready()
        bark: dict[str, Any] = {"ready": bark_ok, **self.bark.describe()}
        if self.bark_error and not bark_ok:
            bark["error"] = self.bark_error
        return {
            "engine": "bark" if bark_ok else "piper",
            "sample_rate_hz": self.sample_rate_hz,
            "default_voice": self.default_voice,
            "bark": bark,
            "piper": {"ready": self.piper.ready(), **self.piper.describe()},
        }

    def voices(self) -> list[Voice]:
        return [*self.bark.voices(), *self.piper.voices()]

    def bark_voice_names(self) -> list[str]:
        return [v.name for v in self.bark.voices()]

    # -- requests

    async def plan(self, text: Any, voice: str | None = None, speed: Any = 1.0) -> Plan:
        """Validate a request (InvalidRequestError says what is accepted) and split its text.

        A voice that is not a Bark preset is looked up at the tts service; when that service cannot be asked,
        the request fails with its error (503) rather than a guess."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequestError("text must not be empty", param="text")
        if len(text) > self.max_text_chars:
            raise InvalidRequestError(f"text is {len(text)} characters; the maximum is {self.max_text_chars} "
                                      "(split it into several requests)", param="text")
        if not _speakable(text):
            raise InvalidRequestError("text must contain at least one letter or digit", param="text")
        speed = check_speed(speed)
        if voice is not None and (not isinstance(voice, str) or not voice.strip()):
            raise InvalidRequestError("voice must be a non-empty voice name or omitted", param="voice")
        name = voice or self.default_voice
        bark_names = self.bark_voice_names()
        if name in bark_names:
            is_bark = True
        elif BARK_PRESET.match(name):
            raise InvalidRequestError(f"Bark voice {name!r} is not in the loaded checkpoint; Bark voices: "
                                      f"{', '.join(bark_names)}", param="voice")
        else:
            try:
                known = await self.piper.has_voice(name)
            except ServiceError as exc:
                raise UpstreamUnavailableError(
                    f"voice {name!r} is not a Bark preset, and the Piper voices cannot be listed: {exc.message}"
                ) from exc
            if not known:
                piper_names = [v.name for v in self.piper.voices()]
                raise InvalidRequestError(f"unknown voice {name!r}; Bark voices: {', '.join(bark_names)}; "
                                          f"Piper voices: {', '.join(piper_names) or 'none'}", param="voice")
            is_bark = False
        sentences = tuple(split_sentences(text, self.max_sentence_chars))
        return Plan(sentences=sentences, voice=name, bark=is_bark, speed=speed)

    def _bark_budget_s(self) -> float:
        """Bark's time for one sentence: the setting, capped so Piper keeps its timeout (or half of what is
        left) before the request's deadline."""
        budget = self.bark_timeout_s
        deadline = context.get_deadline()
        if deadline is not None:
            left = deadline.remaining()
            budget = min(budget, left - min(self.piper_timeout_s, left / 2))
        return budget

    async def _try_bark(self, sentence: str, voice: str) -> tuple[AudioSegment | None, str | None, str]:
        """(audio, None, "") or (None, reason, detail)."""
        if not self.bark.ready():
            return None, "not_ready", self.bark_error or "bark is still loading"
        budget = self._bark_budget_s()
        if budget <= 0:
            return None, "timeout", "no time left for bark before the request's deadline"
        try:
            async with asyncio.timeout(budget):
                return await self.bark.synthesize(sentence, voice, 1.0), None, ""
        except TimeoutError:
            return None, "timeout", f"no audio within {budget:.2f} s"
        except InvalidRequestError:
            raise
        except BusyError as exc:
            return None, "busy", exc.message
        except EngineNotReadyError as exc:
            return None, "not_ready", exc.message
        except ServiceError as exc:
            return None, "error", exc.message
        except Exception as exc:  # an engine bug must not cost the sentence
            log.exception("bark raised", extra={"engine": self.bark.name})
            return None, "error", f"{type(exc).__name__}: {exc}"

    def _both_failed(self, reason: str, detail: str, exc: ServiceError) -> ServiceError:
        message = (f"bark could not speak ({reason}: {detail}); fallback piper at {self.piper.url} failed "
                   f"({exc.message})")
        if isinstance(exc, UpstreamUnavailableError):
            return UpstreamUnavailableError(message, retry_after_s=exc.retry_after_s or 2)
        if isinstance(exc, DeadlineExceededError):
            return DeadlineExceededError(message)
        if isinstance(exc, UpstreamFailedError):
            return UpstreamFailedError(message, retryable=exc.retryable, upstream_status=exc.upstream_status,
                                       upstream_code=exc.upstream_code, retry_after_s=exc.retry_after_s)
        return EngineFailedError(message)

    def _out(self, audio: AudioSegment) -> AudioSegment:
        return audio.to_mono().resample(self.sample_rate_hz)

    async def speak(self, plan: Plan, index: int, *, skip_bark: tuple[str, str] | None = None) -> SpokenSentence:
        """Speak ``plan.sentences[index]``: Bark (if the plan says so and ``skip_bark`` does not), else Piper.

        ``skip_bark`` = (reason, detail) sends the sentence to Piper as a fallback for that reason."""
        sentence = plan.sentences[index]
        t0 = time.perf_counter()
        reason: str | None = None
        detail = ""
        if plan.bark:
            if skip_bark is not None:
                reason, detail = skip_bark
            elif plan.speed != 1.0:
                reason, detail = "unsupported", f"bark has no speed control (speed={plan.speed:g})"
            else:
                audio, reason, detail = await self._try_bark(sentence, plan.voice)
                if audio is not None:
                    self._observe("bark", audio, t0)
                    return SpokenSentence(index, sentence, self._out(audio), "bark", plan.voice)
            level = logging.INFO if reason in ("not_ready", "unsupported") else logging.WARNING  # expected vs failure
            log.log(level, "sentence %d: bark -> piper (%s: %s)", index, reason, detail,
                    extra={"engine": "bark", "reason": reason})
        t1 = time.perf_counter()
        try:
            audio, used = await self.piper.synthesize_voiced(sentence, None if plan.bark else plan.voice, plan.speed)
        except InvalidRequestError:
            raise
        except ServiceError as exc:
            if reason is None:
                raise
            raise self._both_failed(reason, detail, exc) from exc
        self._observe("piper", audio, t1)
        if reason is not None:
            metrics.FALLBACKS.labels(metrics.service(), "bark", "piper", reason).inc()
        return SpokenSentence(index, sentence, self._out(audio), "piper", used, reason)

    @staticmethod
    def _observe(engine: str, audio: AudioSegment, t0: float) -> None:
        if audio.duration_s > 0:
            labels = (metrics.service(), engine, "synthesize")
            metrics.AUDIO_SECONDS.labels(*labels).inc(audio.duration_s)
            metrics.REAL_TIME_FACTOR.labels(*labels).observe((time.perf_counter() - t0) / audio.duration_s)

    async def speak_all(self, plan: Plan) -> AsyncIterator[SpokenSentence]:
        """Every sentence of the plan, in order, each as soon as it is spoken (see the class docstring for
        when a sentence goes to Piper). Raises the first sentence neither engine could speak."""
        t0 = time.perf_counter()
        skip: tuple[str, str] | None = None
        for index in range(len(plan.sentences)):
            spoken = await self.speak(plan, index, skip_bark=skip)
            if index == 0:
                metrics.TTS_FIRST_CHUNK.labels(metrics.service(), spoken.engine).observe(time.perf_counter() - t0)
            if spoken.fallback_reason == "timeout" and skip is None:
                skip = ("timeout", f"bark timed out on sentence {index} of this answer")
            yield spoken

    async def synthesize(self, sentence: str, voice: str | None, speed: float = 1.0) -> AudioSegment:
        """`SentenceTts.synthesize`: the text (one sentence or more) spoken and joined, Bark first."""
        plan = await self.plan(sentence, voice, speed)
        parts = [s.audio async for s in self.speak_all(plan)]
        return join_sentences(parts, self.sample_rate_hz)


def join_sentences(parts: list[AudioSegment], rate: int, gap_s: float = SENTENCE_GAP_S) -> AudioSegment:
    """Sentences (mono, at ``rate``) joined with ``gap_s`` of silence between them."""
    gap = np.zeros(int(round(gap_s * rate)), dtype=np.float32)
    pieces: list[np.ndarray] = []
    for i, part in enumerate(parts):
        if i:
            pieces.append(gap)
        pieces.append(part.mono_1d())
    return AudioSegment(np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32), rate)
