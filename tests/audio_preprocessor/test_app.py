"""audio-preprocessor routes with the real DeepFilterNet3 engine: /denoise over HTTP and the streaming
WebSocket protocol, including its error closes."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from services.audio_preprocessor.app import create_app
from services.audio_preprocessor.settings import Settings
from services.common.audio import decode_audio, encode_audio
from services.common.testing import audio_file

NOISY = audio_file("noisy/vbd_p232_011_noisy.wav")
CLEAN = audio_file("clean/vbd_p232_011_clean.wav")


def si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    ref, est = ref - ref.mean(), est - est.mean()
    target = (est @ ref) / (ref @ ref) * ref
    return float(10 * np.log10((target @ target) / ((est - target) @ (est - target))))


@pytest.fixture(scope="module")
def client():
    # the noisy test file's estimated SNR is 23.7 dB, the clean one's 33.2 dB: 30 denoises one, skips the other
    app = create_app(Settings(_env_file=None, denoise_engine="deepfilternet", stream_max_frame_s=0.5,
                              denoise_skip_above_snr_db=30))
    with TestClient(app) as c:
        for _ in range(400):
            if c.get("/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        yield c


def test_denoise_returns_cleaner_audio_of_the_same_shape(client):
    r = client.post("/denoise", files={"file": ("n.wav", NOISY.read_bytes(), "audio/wav")})
    assert r.status_code == 200, r.text
    assert r.headers["x-denoise-engine"] == "deepfilternet" and r.headers["x-sample-rate"] == "16000"
    out, rate = sf.read(io.BytesIO(r.content), dtype="float32")
    noisy, clean = decode_audio(NOISY.read_bytes()).mono_1d(), decode_audio(CLEAN.read_bytes()).mono_1d()
    assert rate == 16000 and len(out) == len(noisy)
    assert si_sdr(clean, out) > si_sdr(clean, noisy)


def test_clean_speech_comes_back_unchanged_without_the_engine(client):
    r = client.post("/denoise", files={"file": ("c.wav", CLEAN.read_bytes(), "audio/wav")})
    assert r.status_code == 200, r.text
    assert r.headers["x-denoised"] == "false" and r.headers["x-denoise-engine"] == "none"
    assert float(r.headers["x-estimated-snr-db"]) > 30
    out = decode_audio(r.content)
    assert np.array_equal(out.samples, decode_audio(CLEAN.read_bytes()).samples)
    noisy = client.post("/denoise", files={"file": ("n.wav", NOISY.read_bytes(), "audio/wav")})
    assert noisy.headers["x-denoised"] == "true" and float(noisy.headers["x-estimated-snr-db"]) < 30


def test_discord_48k_stereo_keeps_rate_channels_and_length(client):
    seg = decode_audio(NOISY.read_bytes()).convert(rate=48_000, channels=2)
    r = client.post("/denoise", files={"audio": ("n.flac", encode_audio(seg, "flac"), "audio/flac")})
    out, rate = sf.read(io.BytesIO(r.content), dtype="float32", always_2d=True)
    assert (rate, out.shape) == (48_000, (seg.frames, 2))


@pytest.mark.parametrize("payload, status", [(b"", 422), (b"no audio here" * 10, 422)])
def test_bad_upload_is_a_4xx(client, payload, status):
    r = client.post("/denoise", files={"file": ("x.wav", payload, "audio/wav")})
    assert r.status_code == status and "WAV" in r.json()["error"]["message"]


def stream(client, pcm: bytes, *, rate: int, fmt: str, chunk_bytes: int) -> tuple[dict, bytes, dict]:
    with client.websocket_connect(f"/denoise/streaming?rate={rate}&format={fmt}") as ws:
        ready = json.loads(ws.receive_text())
        out = b""
        for i in range(0, len(pcm), chunk_bytes):
            ws.send_bytes(pcm[i:i + chunk_bytes])
            out += ws.receive_bytes()
        ws.send_text('{"type": "end"}')
        out += ws.receive_bytes()
        end = json.loads(ws.receive_text())
    return ready, out, end


@pytest.mark.parametrize("rate, fmt", [(16_000, "s16le"), (48_000, "f32le")])
def test_stream_output_matches_batch_and_length(client, rate, fmt):
    seg = decode_audio(NOISY.read_bytes()).convert(rate=rate, channels=1)
    if fmt == "s16le":
        pcm = seg.to_pcm16()
    else:
        pcm = seg.mono_1d().astype("<f4").tobytes()
    width = 2 if fmt == "s16le" else 4
    ready, out, end = stream(client, pcm, rate=rate, fmt=fmt, chunk_bytes=int(0.02 * rate) * width)  # 20 ms frames
    assert ready["engine"] == "deepfilternet" and ready["sample_rate_hz"] == rate and ready["latency_ms"] > 0
    assert end == {"type": "end", "samples_in": seg.frames, "samples_out": seg.frames}
    streamed = (np.frombuffer(out, "<i2") / 32768.0) if fmt == "s16le" else np.frombuffer(out, "<f4")
    batch_r = client.post("/denoise", files={"file": ("n.wav", encode_audio(seg, "flac"), "audio/flac")})
    batch, _ = sf.read(io.BytesIO(batch_r.content), dtype="float32")
    assert len(streamed) == len(batch)
    diff = streamed - batch
    assert 10 * np.log10((batch @ batch) / max(diff @ diff, 1e-12)) > 25  # same audio within int16 + edge effects


@pytest.mark.parametrize(
    "url, send, code",
    [
        ("/denoise/streaming?rate=16000&format=mp3", None, 1003),
        ("/denoise/streaming?rate=100", None, 1003),
        ("/denoise/streaming?rate=16000&format=s16le", b"\x00\x01\x02", 1007),  # odd byte count
        ("/denoise/streaming?rate=16000&format=f32le", np.array([np.nan], "<f4").tobytes(), 1007),
        ("/denoise/streaming?rate=16000&format=s16le", bytes(2 * 16000), 1009),  # 1 s > 0.5 s limit
        ("/denoise/streaming?rate=16000&format=s16le", "hello", 1003),
    ],
)
def test_bad_stream_input_closes_with_a_clear_code(client, url, send, code):
    with client.websocket_connect(url) as ws:
        with pytest.raises(WebSocketDisconnect) as info:
            if code != 1003 or send is not None:
                json.loads(ws.receive_text())  # ready
                ws.send_bytes(send) if isinstance(send, bytes) else ws.send_text(send)
            ws.receive_bytes()
    assert info.value.code == code and info.value.reason
    assert client.get("/health/live").status_code == 200  # the service is fine afterwards
