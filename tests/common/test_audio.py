from __future__ import annotations

import io
import logging
import struct

import numpy as np
import pytest
import soundfile as sf

from services.common.audio import (
    ENCODABLE_FORMATS,
    MEDIA_TYPES,
    AudioFormat,
    AudioSegment,
    decode_audio,
    encode_audio,
    encode_wav,
)
from services.common.errors import InvalidAudioError, InvalidRequestError, PayloadTooLargeError


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def db(ratio: float) -> float:
    return 20 * np.log10(ratio)


def stereo_segment(rate: int = 16000, seconds: float = 1.0) -> AudioSegment:
    return AudioSegment(np.stack([sine(440, rate, seconds), sine(660, rate, seconds, 0.3)], axis=1), rate)


def wav_bytes(x: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# --- decode / encode round trips -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "rate", "tol"),
    [("wav", 16000, 1e-4), ("flac", 16000, 1e-4), ("ogg", 16000, 0.05), ("mp3", 16000, 0.05), ("mp3", 48000, 0.05)],
)
def test_round_trip_preserves_rate_channels_duration(fmt: str, rate: int, tol: float) -> None:
    seg = stereo_segment(rate)
    data = encode_audio(seg, fmt)
    out = decode_audio(data)
    assert (out.sample_rate, out.channels) == (rate, 2)
    assert out.frames == pytest.approx(seg.frames, abs=rate * 0.01)
    assert out.duration_s == pytest.approx(1.0, abs=0.01)
    n = min(out.frames, seg.frames)
    mid = slice(n // 4, 3 * n // 4)  # codecs smear the edges
    for ch in range(2):
        assert rms(out.samples[mid, ch] - seg.samples[mid, ch]) < tol
    assert fmt in ENCODABLE_FORMATS and MEDIA_TYPES[fmt].startswith("audio/")


def test_ogg_opus_decodes() -> None:
    seg = AudioSegment(sine(440, 48000, 1.0), 48000)
    out = decode_audio(encode_audio(seg, "ogg", subtype="opus"))
    assert (out.sample_rate, out.channels, out.frames) == (48000, 1, 48000)
    assert abs(db(rms(out.samples) / rms(seg.samples))) < 0.5


def test_wav_header_is_not_samples() -> None:
    x = np.full(1000, 0.25, dtype=np.float32)
    x[:5] = [0.0, 0.5, -0.5, 1.0 - 2**-15, -1.0]
    out = decode_audio(wav_bytes(x, 22050))
    assert out.frames == 1000 and out.sample_rate == 22050
    np.testing.assert_allclose(out.mono_1d()[:6], [0.0, 0.5, -0.5, 1.0 - 2**-15, -1.0, 0.25], atol=1e-6)
    np.testing.assert_allclose(out.mono_1d()[5:], 0.25, atol=1e-6)


def test_encode_wav_is_pcm16() -> None:
    info = sf.info(io.BytesIO(encode_wav(stereo_segment())))
    assert (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "PCM_16", 2, 16000)


# --- PCM, mixdown, resampling --------------------------------------------------------------------------


def test_pcm16_round_trip_and_clipping() -> None:
    ints = np.array([[0, -1], [32767, -32768], [123, 4567]], dtype="<i2")
    seg = AudioSegment.from_pcm16(ints.tobytes(), 8000, channels=2)
    assert (seg.frames, seg.channels, seg.samples.dtype) == (3, 2, np.float32)
    assert seg.samples[1, 1] == -1.0
    assert seg.to_pcm16() == ints.tobytes()
    loud = AudioSegment(np.array([1.5, -2.0, 1.0, 0.5], dtype=np.float32), 8000)
    assert np.frombuffer(loud.to_pcm16(), "<i2").tolist() == [32767, -32768, 32767, 16384]
    fmt = AudioFormat(8000, 2, 2)
    assert AudioSegment.from_pcm(ints.tobytes(), fmt).to_pcm16() == ints.tobytes()
    assert fmt.bytes_per_frame == 4 and fmt.bytes_per_second == 32000 and fmt.duration_s(16000) == 0.5


def test_float32_bytes_and_bad_pcm() -> None:
    x = np.array([[0.1, -0.2], [0.3, 0.4]], dtype="<f4")
    np.testing.assert_array_equal(AudioSegment.from_float32_bytes(x.tobytes(), 8000, 2).samples, x)
    with pytest.raises(InvalidAudioError, match="multiples of 4 bytes"):
        AudioSegment.from_pcm16(b"\x00" * 6, 48000, channels=2)
    with pytest.raises(InvalidAudioError, match="NaN"):
        AudioSegment.from_float32_bytes(np.array([np.nan], "<f4").tobytes(), 8000)
    with pytest.raises(InvalidRequestError):
        AudioFormat(0, 2, 1)


def test_discord_48k_stereo_to_16k_mono() -> None:
    left, right = sine(440, 48000, 2.0, 0.6), np.full(96000, 0.2, dtype=np.float32)
    pcm = AudioSegment(np.stack([left, right], axis=1), 48000).to_pcm16()
    seg = AudioSegment.from_pcm16(pcm, 48000, channels=2)
    mono = seg.to_mono()
    np.testing.assert_allclose(mono.mono_1d(), (seg.samples[:, 0] + seg.samples[:, 1]) / 2, atol=1e-7)
    out = seg.convert(rate=16000, channels=1)
    assert (out.sample_rate, out.channels, out.frames) == (16000, 1, 32000)
    assert out.duration_s == pytest.approx(2.0)
    mid = out.mono_1d()[4000:-4000]
    assert np.mean(mid) == pytest.approx(0.1, abs=2e-3)  # DC from R / 2, the sine averages out
    assert rms(mid - 0.1) == pytest.approx(0.3 / np.sqrt(2), rel=0.01)  # L's 0.6 sine halved


@pytest.mark.parametrize("freq", [9000, 10000, 12000])
def test_resample_antialiasing_removes_tones_above_nyquist(freq: int) -> None:
    # 48 kHz -> 16 kHz: Nyquist is 8 kHz, so these would alias to 16k - f (7k, 6k, 4k) if not filtered.
    x = sine(freq, 48000, 1.0)
    naive = x[::3]  # decimation without a filter: the alias keeps full amplitude (proves the test bites)
    assert abs(db(rms(naive) / rms(x))) < 1
    out = AudioSegment(x, 48000).resample(16000)
    assert out.frames == 16000
    assert db(rms(out.mono_1d()[1000:-1000]) / rms(x)) < -40


@pytest.mark.parametrize("freq", [1000, 7000])
def test_resample_keeps_in_band_tones(freq: int) -> None:
    x = sine(freq, 48000, 1.0)
    out = AudioSegment(x, 48000).resample(16000)
    assert abs(db(rms(out.mono_1d()[1000:-1000]) / rms(x))) < 0.5


def test_convert_channels_and_same_rate() -> None:
    mono = AudioSegment(sine(440, 16000, 0.1), 16000)
    assert mono.resample(16000) is mono and mono.convert() is mono
    stereo = mono.convert(channels=2)
    assert stereo.channels == 2 and np.array_equal(stereo.samples[:, 0], stereo.samples[:, 1])
    with pytest.raises(InvalidRequestError, match="accepted"):
        stereo_segment().convert(channels=3)


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        np.random.default_rng(0).bytes(4096),
        b"this is plain text, not audio at all\n" * 20,
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # cut inside the header
    ],
    ids=["empty", "random", "text", "cut-header"],
)
def test_not_audio_is_invalid_audio(data: bytes) -> None:
    with pytest.raises(InvalidAudioError) as ei:
        decode_audio(data)
    assert "WAV, FLAC, OGG" in ei.value.message and "MP3" in ei.value.message
    assert ei.value.http_status == 422 and ei.value.code == "invalid_audio"


def test_header_only_wav_rejected() -> None:
    header = wav_bytes(sine(440, 16000, 1.0), 16000)[:44]
    with pytest.raises(InvalidAudioError, match="no samples.*accepted formats: WAV"):
        decode_audio(header)


def test_truncated_wav_decodes_frames_present(caplog: pytest.LogCaptureFixture) -> None:
    # Deliberate: libsndfile keeps the complete frames present (streamed WAVs with placeholder sizes
    # need this); we accept them, exactly, and log a warning. An odd trailing byte is dropped.
    x = sine(440, 16000, 1.0)
    data = wav_bytes(x, 16000)
    with caplog.at_level(logging.WARNING, logger="services.common.audio"):
        out = decode_audio(data[: 44 + 2 * 5000 + 1])
    assert out.frames == 5000
    np.testing.assert_allclose(out.mono_1d(), x[:5000], atol=1e-4)
    assert "truncated" in caplog.text


def test_streamed_wav_placeholder_size_decodes() -> None:
    data = bytearray(wav_bytes(sine(440, 16000, 0.5), 16000))
    data[4:8] = data[40:44] = struct.pack("<I", 0xFFFFFFFF)
    assert decode_audio(bytes(data)).frames == 8000


def test_truncated_flac_rejected() -> None:
    data = encode_audio(stereo_segment(), "flac")
    with pytest.raises(InvalidAudioError, match="could not decode.*accepted formats"):
        decode_audio(data[: len(data) // 2])


def test_limits() -> None:
    data = wav_bytes(sine(440, 16000, 2.0), 16000)
    with pytest.raises(PayloadTooLargeError, match=f"{len(data)} bytes.*limit of 1000 bytes") as ei:
        decode_audio(data, max_bytes=1000)
    assert ei.value.http_status == 413
    with pytest.raises(InvalidAudioError, match=r"2\.00 s long.*limit of 1\.5 s"):
        decode_audio(data, max_duration_s=1.5)
    assert decode_audio(data, max_bytes=len(data), max_duration_s=2.0).frames == 32000


def test_unsupported_encode_rejected() -> None:
    with pytest.raises(InvalidRequestError, match="'aac'.*supported are wav, flac, ogg"):
        encode_audio(stereo_segment(), "aac")
    with pytest.raises(InvalidRequestError, match="subtype"):
        encode_audio(stereo_segment(), "wav", subtype="VORBIS")
    with pytest.raises(InvalidRequestError, match="cannot encode 96000 Hz"):
        encode_audio(AudioSegment(sine(440, 96000, 0.1), 96000), "mp3")
