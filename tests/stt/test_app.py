"""stt routes against the real faster-whisper engine (bundled tiny.en), over real HTTP, including the
optional preprocessing step and its fallback to raw audio."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import Response
from prometheus_client import REGISTRY

from services.common.audio import AudioSegment, decode_audio, encode_audio, encode_wav
from services.common.testing import audio_file, serve_in_thread, wait_ready
from services.stt.app import create_app
from services.stt.settings import Settings

CLIP = audio_file("clean/vbd_p232_011_clean.wav")  # "When a man looks for something beyond his reach..."



@pytest.fixture(scope="module")
def url():
    app = create_app(Settings(_env_file=None, enable_preprocessing=False, stt_max_audio_s=20, stt_max_upload_bytes=3_000_000))
    with serve_in_thread(app) as base:
        wait_ready(base, timeout_s=30)
        yield base


def post(url, data: bytes, field="file", **form):
    return httpx.post(f"{url}/transcribe", files={field: ("a.wav", data, "audio/wav")}, data=form, timeout=60)


def test_transcribe_returns_text_language_duration_segments_and_timing(url):
    r = post(url, CLIP.read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert "pot of gold" in body["text"].lower()
    assert body["language"] == "en"
    assert abs(body["duration"] - decode_audio(CLIP.read_bytes()).duration_s) < 0.01
    assert body["segments"] and body["processing_time"] > 0
    assert body["preprocessed"] is False


def test_discord_48k_stereo_and_the_plans_audio_field_are_accepted(url):
    seg = decode_audio(CLIP.read_bytes()).convert(rate=48_000, channels=2)
    r = post(url, encode_wav(seg), field="audio")
    assert r.status_code == 200 and "pot of gold" in r.json()["text"].lower()
    assert abs(r.json()["duration"] - seg.duration_s) < 0.01


def test_mp3_upload_is_accepted(url):
    seg = decode_audio(CLIP.read_bytes())
    r = post(url, encode_audio(seg, "mp3"))
    assert r.status_code == 200 and "rainbow" in r.json()["text"].lower()


def test_word_timestamps_on_request(url):
    body = post(url, CLIP.read_bytes(), word_timestamps="true").json()
    words = [w for s in body["segments"] for w in s["words"]]
    assert len(words) >= 10
    assert all(0 <= w["start"] <= w["end"] <= body["duration"] + 0.5 for w in words)


@pytest.mark.parametrize(
    "payload, status, words",
    [
        (b"", 422, ["empty"]),
        (b"definitely not audio" * 50, 422, ["WAV, FLAC"]),
        (encode_wav(AudioSegment(np.zeros((16000 * 25, 1), dtype=np.float32), 16000)), 422, ["25", "20"]),
        (b"RIFF" + bytes(3_100_000), 413, ["3000000"]),
    ],
)
def test_bad_audio_is_a_4xx_with_the_reason(url, payload, status, words):
    r = post(url, payload)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert all(w in message for w in words), message


def test_truncated_wav_keeps_what_is_there(url):
    data = CLIP.read_bytes()
    r = post(url, data[: len(data) // 2])
    assert r.status_code == 200
    assert r.json()["duration"] < decode_audio(data).duration_s * 0.6


def test_bad_parameters_are_rejected(url):
    assert post(url, CLIP.read_bytes(), language="fr").status_code == 422  # English-only model
    assert post(url, CLIP.read_bytes(), temperature="3").status_code == 422
    r = httpx.post(f"{url}/transcribe", data={"language": "en"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "file"


def test_openai_route_rejects_unknown_model_and_misused_granularities(url):
    files = {"file": ("a.wav", CLIP.read_bytes(), "audio/wav")}
    r = httpx.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": "gpt-4o-transcribe"})
    assert r.status_code == 422 and "whisper-1" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/audio/transcriptions", files=files,
                   data={"model": "whisper-1", "timestamp_granularities[]": "word"})
    assert r.status_code == 422 and "verbose_json" in r.json()["error"]["message"]


# --- preprocessing: audio goes to /denoise first, raw audio when that fails --------------------------------------


def preprocessor(mode: str, seen: list[bytes]) -> FastAPI:
    """Stand-in for audio-preprocessor's /denoise at the network edge: `ok` returns the audio quieter
    (so the route can tell it was used), `slow` answers after 5 s, `error` answers 500."""
    app = FastAPI()

    @app.post("/denoise")
    async def denoise(file: UploadFile, request: Request):
        data = await file.read()
        seen.append(data)
        if mode == "slow":
            await asyncio.sleep(5)
        if mode == "error":
            return Response(b'{"error": {"code": "engine_failed", "message": "boom", "retryable": false}}', 500,
                            media_type="application/json")
        seg = decode_audio(data)
        return Response(encode_wav(AudioSegment(seg.samples * 0.5, seg.sample_rate)), media_type="audio/wav")

    @app.get("/health/live")
    async def live():
        return {"status": "alive"}

    return app


def fallbacks(reason: str) -> float:
    return REGISTRY.get_sample_value("engine_fallbacks_total", {"service": "stt", "engine_from": "audio-preprocessor",
                                                               "engine_to": "raw-audio", "reason": reason}) or 0.0


@pytest.mark.parametrize("mode, reason", [("ok", None), ("slow", "timeout"), ("error", "error"), ("down", "unavailable")])
def test_preprocessing_is_used_and_falls_back_to_raw_audio(mode, reason):
    seen: list[bytes] = []
    with serve_in_thread(preprocessor(mode, seen)) as pre_url:
        if mode == "down":
            pre_url = "http://127.0.0.1:9"  # nothing listens on the discard port
        settings = Settings(_env_file=None, enable_preprocessing=True, preprocessor_url=pre_url,
                            preprocessor_timeout_s=1.0)
        before = fallbacks(reason) if reason else 0
        with serve_in_thread(create_app(settings)) as url:
            wait_ready(url, timeout_s=30)
            r = post(url, CLIP.read_bytes())
    assert r.status_code == 200, r.text
    assert "pot of gold" in r.json()["text"].lower()  # the turn is never lost
    assert r.json()["preprocessed"] is (mode == "ok")
    if mode != "down":
        assert seen and seen[0] == CLIP.read_bytes()  # the preprocessor got the upload as sent
    if reason:
        assert fallbacks(reason) == before + 1


def test_preprocessor_answering_garbage_falls_back_to_raw_audio():
    app = FastAPI()

    @app.post("/denoise")
    async def denoise(file: UploadFile):
        return Response(b"not audio at all", media_type="audio/wav")

    with serve_in_thread(app) as pre_url:
        settings = Settings(_env_file=None, enable_preprocessing=True, preprocessor_url=pre_url)
        before = fallbacks("error")
        with serve_in_thread(create_app(settings)) as url:
            wait_ready(url, timeout_s=30)
            r = post(url, CLIP.read_bytes())
    assert r.status_code == 200 and r.json()["preprocessed"] is False
    assert "pot of gold" in r.json()["text"].lower()
    assert fallbacks("error") == before + 1


@pytest.mark.parametrize("service_default, asked, used", [(True, "false", False), (False, "true", True),
                                                            (True, None, True), (False, None, False)])
def test_the_preprocess_field_overrides_the_service_default(service_default, asked, used):
    """A caller that denoised already (the orchestrator) says preprocess=false; omitted = ENABLE_PREPROCESSING."""
    seen: list[bytes] = []
    with serve_in_thread(preprocessor("ok", seen)) as pre_url:
        settings = Settings(_env_file=None, enable_preprocessing=service_default, preprocessor_url=pre_url)
        with serve_in_thread(create_app(settings)) as url:
            wait_ready(url, timeout_s=30)
            fields = {} if asked is None else {"preprocess": asked}
            r = post(url, CLIP.read_bytes(), **fields)
    assert r.status_code == 200 and r.json()["preprocessed"] is used
    assert bool(seen) is used


def test_beam_size_is_honoured_and_range_checked(url):
    assert post(url, CLIP.read_bytes(), beam_size="1").status_code == 200
    r = post(url, CLIP.read_bytes(), beam_size="50")
    assert r.status_code == 422 and "beam_size" in r.text
