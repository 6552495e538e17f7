"""tts-bark routes with the real `BarkEngine` on the tiny checkpoint and the real tts (Piper) service,
through real HTTP and the real `openai` client."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from prometheus_client import REGISTRY

from services.tts_bark.app import create_app

from .conftest import GAP_SAMPLES, SENTENCE_SAMPLES, bark_settings, serve_bark

THREE = "The kettle is on. Dinner is at 7.30 tonight, says Dr. Smith. Please bring the blue umbrella!"


@pytest.fixture(scope="module")
def url(bark_dir, piper_url):
    app = create_app(bark_settings(bark_dir, piper_url, bark_max_text_chars=300))
    with serve_bark(app) as base:
        yield base


def decode(b64: str) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(base64.b64decode(b64)), dtype="float32")
    return audio, rate


def fallbacks(reason: str) -> float:
    labels = {"service": "tts-bark", "engine_from": "bark", "engine_to": "piper", "reason": reason}
    return REGISTRY.get_sample_value("engine_fallbacks_total", labels) or 0.0


def test_seed_shape_hello_world(url):
    response = httpx.post(f"{url}/synthesize", json={"text": "Hello world"}, timeout=60)
    assert response.status_code == 200
    assert response.json()["engine"] in ["bark", "piper"]


def test_bark_speaks_every_sentence_and_joins_them_at_24khz(url):
    r = httpx.post(f"{url}/synthesize", json={"text": THREE, "voice": "v2/en_speaker_6"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["engine"] == "bark" and body["voice"] == "v2/en_speaker_6"
    assert r.headers["x-tts-engine"] == "bark" and r.headers["x-sample-rate"] == "24000"
    assert [s["text"] for s in body["sentences"]] == [
        "The kettle is on.", "Dinner is at 7.30 tonight, says Dr. Smith.", "Please bring the blue umbrella!"]
    assert all(s["engine"] == "bark" and "fallback_reason" not in s for s in body["sentences"])
    audio, rate = decode(body["audio"])
    assert rate == 24_000 == body["sample_rate"] and body["format"] == "wav"
    assert len(audio) == 3 * SENTENCE_SAMPLES + 2 * GAP_SAMPLES  # three Bark sentences, two pauses
    assert body["duration_s"] == pytest.approx(len(audio) / rate, abs=1e-3)


def test_streaming_sends_one_line_per_sentence_in_order_then_done(url):
    with httpx.stream("POST", f"{url}/synthesize", json={"text": THREE, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        assert r.headers["x-sample-rate"] == "24000"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    *sentences, done = lines
    assert [s["index"] for s in sentences] == [0, 1, 2]
    assert sentences[0]["text"] == "The kettle is on."
    for s in sentences:
        audio, rate = decode(s["audio"])
        assert (s["engine"], s["voice"], rate, len(audio)) == ("bark", "v2/en_speaker_1", 24_000, SENTENCE_SAMPLES)
    assert done == {"done": True, "engine": "bark", "voice": "v2/en_speaker_1", "sentences": 3,
                    "duration_s": pytest.approx(3 * SENTENCE_SAMPLES / 24_000)}


def test_speed_is_honoured_by_piper_and_counted_as_unsupported(url):
    before = fallbacks("unsupported")
    durations = {}
    for speed in (0.5, 2.0):
        body = httpx.post(f"{url}/synthesize", json={"text": "One two three four five.", "speed": speed},
                          timeout=60).json()
        assert body["engine"] == "piper" and body["voice"] == "en_US-joe-medium"
        assert body["sentences"][0]["fallback_reason"] == "unsupported"
        audio, rate = decode(body["audio"])
        assert rate == 24_000  # Piper's 22.05 kHz, resampled
        durations[speed] = len(audio) / rate
    assert durations[2.0] < durations[0.5] / 2
    assert fallbacks("unsupported") == before + 2


def test_a_piper_voice_goes_to_piper_without_a_fallback(url):
    before = sum(fallbacks(r) for r in ("not_ready", "error", "timeout", "busy", "unsupported"))
    body = httpx.post(f"{url}/synthesize", json={"text": "Hello. Goodbye.", "voice": "en_US-joe-medium"},
                      timeout=60).json()
    assert body["engine"] == "piper" and body["voice"] == "en_US-joe-medium"
    assert all(s["engine"] == "piper" and "fallback_reason" not in s for s in body["sentences"])
    assert sum(fallbacks(r) for r in ("not_ready", "error", "timeout", "busy", "unsupported")) == before


def test_voices_lists_bark_presets_with_labels_and_piper_voices(url):
    body = httpx.get(f"{url}/voices").json()
    assert body["default"] == "v2/en_speaker_1"
    bark = {v["name"]: v["label"] for v in body["bark"]}
    assert len(bark) == 10 and bark["v2/en_speaker_0"] == "Male voice" and bark["v2/en_speaker_1"] == "Female voice"
    assert bark["v2/en_speaker_2"] == "Male with accent" and bark["v2/en_speaker_3"] == "Female expressive"
    assert bark["v2/en_speaker_6"] == "Male deep" and bark["v2/en_speaker_9"] == "English speaker 9"
    assert body["piper"] == ["en_US-joe-medium"] and "piper_error" not in body


def test_readiness_shows_bark_and_piper(url, piper_url):
    body = httpx.get(f"{url}/health/ready").json()
    component = body["components"]["tts-bark"]
    assert body["status"] == "ready" and component["engine"] == "bark"
    assert component["bark"]["ready"] and component["bark"]["model"].endswith("bark-tiny0")
    assert component["piper"]["ready"] and component["piper"]["url"] == piper_url
    assert body["dependencies"]["tts"] == {"url": piper_url, "required": False, "ok": True, "detail": "HTTP 200"}


@pytest.mark.parametrize(
    "body, param",
    [
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "..."}, "text"),
        ({"text": "x" * 301}, "text"),
        ({"text": "hi", "voice": "nobody"}, "voice"),
        ({"text": "hi", "voice": "v2/en_speaker_10"}, "voice"),
        ({"text": "hi", "speed": 10}, "speed"),
        ({"text": "hi", "speed": 0.1}, "speed"),
        ({"text": "hi", "format": "mp3"}, "format"),
        ({"text": "hi", "pitch": 3}, "pitch"),  # accepted-and-ignored is not an option
    ],
)
def test_bad_input_is_a_422_that_says_what_is_accepted(url, body, param):
    r = httpx.post(f"{url}/synthesize", json=body, timeout=30)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and param in (err["param"] or "") + err["message"]


def test_unknown_voice_lists_the_accepted_voices(url):
    message = httpx.post(f"{url}/synthesize", json={"text": "hi", "voice": "alloy"}).json()["error"]["message"]
    assert "v2/en_speaker_0" in message and "en_US-joe-medium" in message


# --- the real openai client ------------------------------------------------------------------------------


@pytest.fixture
def oai(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_openai_client_gets_a_wav_spoken_by_bark(oai):
    response = oai.audio.speech.create(model="tts-1", voice="v2/en_speaker_3", input=THREE, response_format="wav")
    assert response.response.headers["x-tts-engine"] == "bark"
    audio, rate = sf.read(io.BytesIO(response.content), dtype="float32")
    assert rate == 24_000 and len(audio) == 3 * SENTENCE_SAMPLES + 2 * GAP_SAMPLES


def test_openai_pcm_is_24khz_s16le_and_streams(oai):
    with oai.audio.speech.with_streaming_response.create(
        model="bark", voice="v2/en_speaker_1", input=THREE, response_format="pcm"
    ) as response:
        assert response.headers["content-type"] == "audio/pcm" and response.headers["x-sample-rate"] == "24000"
        data = b"".join(response.iter_bytes())
    assert len(data) == 2 * (3 * SENTENCE_SAMPLES + 2 * GAP_SAMPLES)


def test_openai_speed_goes_to_piper(oai):
    response = oai.audio.speech.create(model="tts-1", voice="v2/en_speaker_1", input="Hello there.", speed=1.5,
                                       response_format="wav")
    assert response.response.headers["x-tts-engine"] == "piper"
    assert response.response.headers["x-tts-voice"] == "en_US-joe-medium"


@pytest.mark.parametrize("kwargs", [
    {"model": "gpt-4o-mini-tts"},
    {"voice": "alloy"},
    {"response_format": "mp3"},
    {"instructions": "whisper"},
    {"speed": 5.0},
])
def test_openai_client_gets_openai_shaped_errors(oai, kwargs):
    args = {"model": "tts-1", "voice": "v2/en_speaker_1", "input": "hi", "response_format": "wav", **kwargs}
    with pytest.raises(openai.UnprocessableEntityError):
        oai.audio.speech.create(**args)
