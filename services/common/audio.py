"""The fleet's one audio type and converter (in the spirit of Wyoming's single AudioFormat).

`AudioSegment` holds float32 samples shaped (frames, channels), nominally in [-1, 1]. Bytes come in
through `decode_audio` (files: WAV, FLAC, OGG Vorbis/Opus, MP3, via libsndfile) or `from_pcm16` /
`from_float32_bytes` (raw interleaved PCM, e.g. Discord's 48 kHz stereo int16), and leave through
`to_pcm16` or `encode_audio`. Resampling is soxr "HQ" (band-limited, so no aliasing).

Truncated files: libsndfile decodes the complete frames present when a WAV header (or an MP3 Xing
header) declares more data than there is, which is also what streamed WAVs with placeholder sizes rely
on; we keep those frames and log a warning. Zero frames and streams that fail to decode are rejected.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from services.common.errors import InvalidAudioError, InvalidRequestError, PayloadTooLargeError, ServiceError

log = logging.getLogger(__name__)

ACCEPTED_FORMATS = "WAV, FLAC, OGG (Vorbis/Opus), MP3"
_DECODABLE = frozenset({"WAV", "WAVEX", "RF64", "W64", "FLAC", "OGG", "MP3"})
# fmt -> (libsndfile container, default subtype); MP3 is included because libsndfile >= 1.1 writes it.
_CONTAINERS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"), "mp3": ("MP3", "MPEG_LAYER_III")}
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg"}
ENCODABLE_FORMATS = tuple(_CONTAINERS)


@dataclass(frozen=True)
class AudioFormat:
    """Raw PCM layout: `rate` Hz, `width` bytes per sample (2 = int16, 4 = float32), `channels`."""

    rate: int
    width: int
    channels: int

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.width not in (2, 4) or self.channels < 1:
            raise InvalidRequestError(
                f"invalid audio format rate={self.rate} width={self.width} channels={self.channels}: "
                "accepted are rate > 0, width 2 (int16) or 4 (float32), channels >= 1"
            )

    @property
    def bytes_per_frame(self) -> int:
        return self.width * self.channels

    @property
    def bytes_per_second(self) -> int:
        return self.bytes_per_frame * self.rate

    def frames_in(self, n_bytes: int) -> int:
        """Whole frames in `n_bytes` of this format."""
        return n_bytes // self.bytes_per_frame

    def duration_s(self, n_bytes: int) -> float:
        """Seconds of audio in `n_bytes` of this format."""
        return self.frames_in(n_bytes) / self.rate


@dataclass
class AudioSegment:
    """float32 samples shaped (frames, channels) at `sample_rate` Hz; 1-D input is taken as mono."""

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        arr = np.asarray(self.samples)
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"samples must be floating point in [-1, 1], got {arr.dtype}; use from_pcm16 for int16")
        if arr.ndim == 1:
            arr = arr.reshape(-1, 1)
        if arr.ndim != 2 or arr.shape[1] < 1:
            raise ValueError(f"samples must be shaped (frames, channels), got {arr.shape}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {self.sample_rate}")
        self.samples = np.ascontiguousarray(arr, dtype=np.float32)

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    @property
    def format(self) -> AudioFormat:
        """The int16 PCM format `to_pcm16` produces."""
        return AudioFormat(self.sample_rate, 2, self.channels)

    @classmethod
    def from_pcm(cls, data: bytes, fmt: AudioFormat) -> AudioSegment:
        """Raw interleaved little-endian PCM in `fmt` (int16 or float32)."""
        reader = cls.from_pcm16 if fmt.width == 2 else cls.from_float32_bytes
        return reader(data, fmt.rate, fmt.channels)

    @classmethod
    def from_pcm16(cls, data: bytes, rate: int, channels: int = 1) -> AudioSegment:
        """Interleaved little-endian int16 PCM (no header). Empty data gives an empty segment."""
        return cls(_frombuffer(data, "<i2", rate, channels).astype(np.float32) / 32768.0, rate)

    @classmethod
    def from_float32_bytes(cls, data: bytes, rate: int, channels: int = 1) -> AudioSegment:
        """Interleaved little-endian float32 PCM (no header); non-finite values are rejected, others clipped."""
        x = _frombuffer(data, "<f4", rate, channels)
        if not np.isfinite(x).all():
            raise InvalidAudioError("float32 PCM contains NaN or infinity: accepted are finite samples in [-1, 1]")
        return cls(np.clip(x, -1.0, 1.0), rate)

    def to_pcm16(self) -> bytes:
        """Interleaved little-endian int16, clipped; exact inverse of `from_pcm16`."""
        return np.clip(np.rint(self.samples * 32768.0), -32768, 32767).astype("<i2").tobytes()

    def to_mono(self) -> AudioSegment:
        """Mix down by averaging the channels."""
        return self if self.channels == 1 else AudioSegment(self.samples.mean(axis=1, keepdims=True), self.sample_rate)

    def mono_1d(self) -> np.ndarray:
        """Mono samples as a contiguous 1-D float32 array (what most models take)."""
        return np.ascontiguousarray(self.to_mono().samples[:, 0])

    def resample(self, rate: int) -> AudioSegment:
        """Band-limited resampling with soxr "HQ"; returns self when the rate already matches."""
        if rate == self.sample_rate:
            return self
        if rate <= 0:
            raise InvalidRequestError(f"cannot resample to {rate} Hz: accepted are rates > 0")
        return AudioSegment(soxr.resample(self.samples, self.sample_rate, rate, quality="HQ"), rate)

    def convert(self, rate: int | None = None, channels: int | None = None) -> AudioSegment:
        """Resample and/or remix: channels=1 averages, channels=2 from mono duplicates."""
        seg = self
        if channels is not None and channels != seg.channels:
            if channels == 1:
                seg = seg.to_mono()
            elif channels == 2 and seg.channels == 1:
                seg = AudioSegment(np.repeat(seg.samples, 2, axis=1), seg.sample_rate)
            else:
                raise InvalidRequestError(
                    f"cannot convert {seg.channels} channels to {channels}: accepted are 1 (mixdown) or 2 (from mono)"
                )
        return seg.resample(rate) if rate is not None else seg


def _frombuffer(data: bytes, dtype: str, rate: int, channels: int) -> np.ndarray:
    fmt = AudioFormat(rate, np.dtype(dtype).itemsize, channels)
    if len(data) % fmt.bytes_per_frame:
        raise InvalidAudioError(
            f"raw PCM of {len(data)} bytes is not a whole number of frames: accepted are multiples of "
            f"{fmt.bytes_per_frame} bytes ({fmt.width} bytes x {channels} channels)"
        )
    return np.frombuffer(data, dtype=dtype).reshape(-1, channels)


def decode_audio(data: bytes, *, max_bytes: int | None = None, max_duration_s: float | None = None) -> AudioSegment:
    """Decode a WAV/FLAC/OGG/MP3 file's bytes (headers are parsed, never taken as samples).

    Raises PayloadTooLargeError over `max_bytes`, InvalidAudioError for empty, unrecognised, undecodable
    or zero-frame input and for audio longer than `max_duration_s` (checked before decoding when the
    header tells the length, and again after).
    """
    if not data:
        raise InvalidAudioError(f"empty audio: no bytes received; accepted formats: {ACCEPTED_FORMATS}")
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLargeError(f"audio is {len(data)} bytes, over the limit of {max_bytes} bytes")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.format not in _DECODABLE:
                raise InvalidAudioError(f"unsupported audio container {f.format}; accepted formats: {ACCEPTED_FORMATS}")
            rate, declared = f.samplerate, f.frames
            _check_duration(declared / rate if rate > 0 else 0.0, max_duration_s)
            samples = f.read(dtype="float32", always_2d=True)
            header_log = f.extra_info
    except ServiceError:
        raise
    except Exception as e:  # libsndfile raises LibsndfileError/RuntimeError/ValueError/...; all mean bad input
        reason = getattr(e, "error_string", None) or str(e) or type(e).__name__
        raise InvalidAudioError(f"could not decode audio ({reason}); accepted formats: {ACCEPTED_FORMATS}") from e
    if samples.shape[0] == 0:
        raise InvalidAudioError(f"audio has no samples (header only or truncated); accepted formats: {ACCEPTED_FORMATS}")
    if not np.isfinite(samples).all():
        raise InvalidAudioError("audio contains NaN or infinite samples; accepted are finite samples in [-1, 1]")
    if samples.shape[0] < declared or "should be" in header_log:
        log.warning("truncated audio: header declares more than present, decoded %d frames", samples.shape[0])
    seg = AudioSegment(np.clip(samples, -1.0, 1.0), rate)
    _check_duration(seg.duration_s, max_duration_s)
    return seg


def _check_duration(duration_s: float, max_duration_s: float | None) -> None:
    if max_duration_s is not None and duration_s > max_duration_s:
        raise InvalidAudioError(f"audio is {duration_s:.2f} s long, over the limit of {max_duration_s:g} s")


def encode_audio(segment: AudioSegment, fmt: str = "wav", *, subtype: str | None = None) -> bytes:
    """Encode to a file in `fmt` (one of ENCODABLE_FORMATS); `subtype` overrides libsndfile's, e.g. "FLOAT"."""
    key = fmt.lower()
    if key not in _CONTAINERS:
        raise InvalidRequestError(f"unsupported audio format {fmt!r}: supported are {', '.join(ENCODABLE_FORMATS)}")
    container, default_subtype = _CONTAINERS[key]
    subtype = (subtype or default_subtype).upper()
    if not sf.check_format(container, subtype):
        raise InvalidRequestError(
            f"unsupported subtype {subtype!r} for {key}: supported are {', '.join(sf.available_subtypes(container))}"
        )
    buf = io.BytesIO()
    try:
        sf.write(buf, np.clip(segment.samples, -1.0, 1.0), segment.sample_rate, format=container, subtype=subtype)
    except Exception as e:  # e.g. MP3/Opus reject sample rates outside their fixed sets
        reason = getattr(e, "error_string", None) or str(e)
        raise InvalidRequestError(
            f"cannot encode {segment.sample_rate} Hz x {segment.channels} ch audio as {key}/{subtype}: {reason}"
        ) from e
    return buf.getvalue()


def encode_wav(segment: AudioSegment) -> bytes:
    """16-bit PCM WAV."""
    return encode_audio(segment, "wav")
