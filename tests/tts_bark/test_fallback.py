"""Bark -> Piper fallback against the REAL tts service: Bark not ready, Bark raising mid-answer, Bark past its
deadline, and Piper down as well (a clear 503, not a hang). Bark is the real engine where its real failure
mode can be produced (no checkpoint); `FakeSentenceTts` stands in where a failure must be injected."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
import soundfile as sf
from prometheus_client import REGISTRY

from services.common.errors import EngineFailedError
from services.common.http import CircuitBreaker, ServiceClient
from services.tts_bark.app import create_app
from services.tts_bark.engine import FallbackTts, PiperClient
from services.tts_bark.testing import FakeSentenceTts

from .conftest import bark_settings, closed_port_url, serve_bark, serve_tts

THREE = "First sentence here. Second sentence here. Third sentence here."


def fallbacks(reason: str) -> float:
    labels = {"service": "tts-bark", "engine_from": "bark", "engine_to": "piper", "reason": reason}
    return REGISTRY.get_sample_value("engine_fallbacks_total", labels) or 0.0


def isolated_piper(settings) -> PiperClient:
    """A PiperClient with its own circuit breaker and no retries, so calls to a dead Piper here cannot open
    the process-wide breaker of target "tts" that the other tests' clients share."""
    client = ServiceClient("tts", settings.piper_fallback_url, timeout_s=settings.piper_timeout_s, retries=0,
                           breaker=CircuitBreaker("tts-isolated"))
    return PiperClient(settings, client=client)


def wav_seconds(b64: str) -> float:
    audio, rate = sf.read(io.BytesIO(base64.b64decode(b64)), dtype="float32")
    assert rate == 24_000
    return len(audio) / rate


# --- Bark not ready ----------------------------------------------------------------------------------------------


def test_bark_without_a_checkpoint_leaves_piper_speaking_and_ready_says_why(tmp_path, piper_url):
    settings = bark_settings(tmp_path / "no-bark-here", piper_url)
    before = fallbacks("not_ready")
    with serve_bark(create_app(settings), bark_ready=False) as url:
        ready = httpx.get(f"{url}/health/ready")
        r = httpx.post(f"{url}/synthesize", json={"text": THREE}, timeout=60)
        voices = httpx.get(f"{url}/voices").json()
    assert ready.status_code == 200  # Piper can answer
    component = ready.json()["components"]["tts-bark"]
    assert component["engine"] == "piper" and not component["bark"]["ready"]
    assert "does not exist" in component["bark"]["error"] and component["piper"]["ready"]
    body = r.json()
    assert r.status_code == 200 and body["engine"] == "piper" and body["voice"] == "en_US-joe-medium"
    assert [s["fallback_reason"] for s in body["sentences"]] == ["not_ready"] * 3
    assert [s["text"] for s in body["sentences"]] == ["First sentence here.", "Second sentence here.",
                                                      "Third sentence here."]
    assert wav_seconds(body["audio"]) > 1.5
    assert fallbacks("not_ready") == before + 3
    assert len(voices["bark"]) == 10  # the standard presets stay selectable (spoken by Piper meanwhile)


def test_fallback_carries_the_service_token(tmp_path):
    with serve_tts(service_auth_token="s3cret") as tts_url:
        settings = bark_settings(tmp_path / "no-bark-here", tts_url, service_auth_token="s3cret")
        with serve_bark(create_app(settings), bark_ready=False) as url:
            refused = httpx.post(f"{tts_url}/synthesize", json={"text": "Hi.", "stream": False})
            r = httpx.post(f"{url}/synthesize", json={"text": "Hello there."},
                           headers={"Authorization": "Bearer s3cret", "X-Correlation-ID": "bark-test-1"}, timeout=60)
    assert refused.status_code == 401  # the tts service wants the token ...
    assert r.status_code == 200 and r.json()["engine"] == "piper"  # ... and tts-bark sent it
    assert r.headers["x-correlation-id"] == "bark-test-1"


# --- Bark raising mid-answer ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_bark_raising_mid_answer_costs_only_that_sentence(piper_url, stream):
    bark = FakeSentenceTts(fail_on_calls=(2,), fail_with=EngineFailedError, seconds=0.5)
    before = fallbacks("error")
    with serve_bark(create_app(bark_settings("unused", piper_url), bark=bark)) as url:
        r = httpx.post(f"{url}/synthesize", json={"text": THREE, "stream": stream}, timeout=60)
    assert r.status_code == 200
    if stream:
        *sentences, done = [json.loads(line) for line in r.text.splitlines()]
        assert done["done"] is True and done["engine"] == "piper" and done["sentences"] == 3
    else:
        body = r.json()
        sentences = body["sentences"]
        assert body["engine"] == "piper" and body["voice"] == "en_US-joe-medium"  # not every sentence was Bark
        assert r.headers["x-tts-engine"] == "piper"
        assert wav_seconds(body["audio"]) == pytest.approx(sum(s["duration_s"] for s in sentences) + 0.5, abs=0.01)
    assert [s["engine"] for s in sentences] == ["bark", "piper", "bark"]
    assert [s.get("fallback_reason") for s in sentences] == [None, "error", None]
    assert [s["voice"] for s in sentences] == ["v2/en_speaker_1", "en_US-joe-medium", "v2/en_speaker_1"]
    assert [s["text"] for s in sentences] == ["First sentence here.", "Second sentence here.", "Third sentence here."]
    assert [c[0] for c in bark.calls] == ["First sentence here.", "Second sentence here.", "Third sentence here."]
    assert fallbacks("error") == before + 1


def test_an_unexpected_exception_in_bark_also_falls_back(piper_url):
    bark = FakeSentenceTts(fail_on_calls=(1,), fail_with=RuntimeError)
    with serve_bark(create_app(bark_settings("unused", piper_url), bark=bark)) as url:
        body = httpx.post(f"{url}/synthesize", json={"text": "Hello there."}, timeout=60).json()
    assert body["engine"] == "piper" and body["sentences"][0]["fallback_reason"] == "error"


# --- Bark past its deadline ------------------------------------------------------------------------------------


def test_bark_past_its_sentence_deadline_hands_the_rest_of_the_answer_to_piper(piper_url):
    bark = FakeSentenceTts(delay_s=60)
    settings = bark_settings("unused", piper_url, bark_sentence_timeout_s=0.3)
    before = fallbacks("timeout")
    with serve_bark(create_app(settings, bark=bark)) as url:
        r = httpx.post(f"{url}/synthesize", json={"text": THREE}, timeout=60)
    body = r.json()
    assert r.status_code == 200 and body["engine"] == "piper"
    assert [s["fallback_reason"] for s in body["sentences"]] == ["timeout"] * 3
    assert len(bark.calls) == 1  # after one timeout the answer does not wait for Bark again
    assert fallbacks("timeout") == before + 3


# --- Piper down as well ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["bark not loaded", "bark raising"])
def test_piper_down_and_bark_failing_is_a_clear_503(tmp_path, case):
    settings = bark_settings(tmp_path / "no-bark-here", closed_port_url(), http_retries=0)
    bark = None if case == "bark not loaded" else FakeSentenceTts(fail_on_calls=(1,))
    app = create_app(settings, bark=bark, piper=isolated_piper(settings))
    with serve_bark(app, bark_ready=bark is not None) as url:
        ready = httpx.get(f"{url}/health/ready")
        r = httpx.post(f"{url}/synthesize", json={"text": "Hello there. Bye."}, timeout=60)
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "upstream_unavailable" and err["retryable"] is True and "retry-after" in r.headers
    assert "bark could not speak" in err["message"] and "fallback piper" in err["message"]
    assert ("does not exist" if case == "bark not loaded" else "failed on call 1") in err["message"]
    assert "unreachable" in err["message"]
    # ready when either engine can answer: only the loaded (fake) Bark case is
    assert ready.status_code == (503 if case == "bark not loaded" else 200)


def test_piper_down_mid_stream_ends_the_stream_with_an_error_line(tmp_path):
    settings = bark_settings("unused", closed_port_url(), http_retries=0)
    bark = FakeSentenceTts(fail_on_calls=(2,))
    with serve_bark(create_app(settings, bark=bark, piper=isolated_piper(settings))) as url:
        r = httpx.post(f"{url}/synthesize", json={"text": THREE, "stream": True}, timeout=60)
        voices = httpx.get(f"{url}/voices").json()
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert r.status_code == 200 and len(lines) == 2  # sentence 0 was sent before sentence 1 failed
    assert lines[0]["index"] == 0 and lines[0]["engine"] == "bark"
    assert lines[1]["error"]["code"] == "upstream_unavailable"
    assert voices["piper"] == [] and "unreachable" in voices["piper_error"]


# --- the chain as a SentenceTts -----------------------------------------------------------------------------------


async def test_fallback_chain_is_itself_a_sentence_tts(piper_url):
    settings = bark_settings("unused", piper_url)
    bark = FakeSentenceTts(fail_on_calls=(1,), seconds=0.5)
    tts = FallbackTts(settings, bark, PiperClient(settings))
    await tts.start()
    try:
        audio = await tts.synthesize("One. Two.", None)  # one from Piper (Bark failed), one from Bark
    finally:
        await tts.aclose()
    assert audio.sample_rate == 24_000 and audio.duration_s > 0.5 + 0.25 + 0.2
