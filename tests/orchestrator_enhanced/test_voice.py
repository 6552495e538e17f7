"""Voice turns through the real stt (whisper tiny.en) and tts (Piper) services, served on free ports, with
scripted chat models as the LLM: audio in, transcript + answer + playable WAV out; the streamed variant sends
per-sentence audio before the answer is complete; a dead primary TTS falls back to Piper; a dead preprocessor
is skipped; stt refusing the audio is a 4xx."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import soundfile as sf
from prometheus_client import REGISTRY

from services.common.metrics import service
from services.common.testing import audio_file, serve_in_thread, wait_ready
from services.orchestrator_enhanced.agent import Agent, load_system_prompt
from services.orchestrator_enhanced.app import create_app
from services.orchestrator_enhanced.guard import Guardrails
from services.orchestrator_enhanced.memory import SqliteMemory
from services.orchestrator_enhanced.pipeline import NO_SPEECH, Orchestrator, split_sentences
from services.orchestrator_enhanced.settings import Settings
from services.orchestrator_enhanced.speech import Speech
from services.orchestrator_enhanced.testing import ScriptedChatModel, say
from services.orchestrator_enhanced.tools import build_tools
from services.stt.app import create_app as create_stt_app
from services.stt.settings import Settings as SttSettings
from services.tts.app import create_app as create_tts_app
from services.tts.settings import Settings as TtsSettings

SPEECH = audio_file("clean/ps_goforward.wav")  # "go forward ten meters"
DEAD = "http://127.0.0.1:9"



@pytest.fixture(scope="module")
def speech_urls() -> Iterator[tuple[str, str]]:
    with serve_in_thread(create_tts_app(TtsSettings(_env_file=None))) as tts, \
            serve_in_thread(create_stt_app(SttSettings(_env_file=None, enable_preprocessing=False))) as stt:
        wait_ready(tts, timeout_s=180)
        wait_ready(stt, timeout_s=180)
        yield stt, tts


@contextmanager
def orchestrator(tmp_path: Path, model: ScriptedChatModel, stt: str, tts: str, **kw) -> Iterator[str]:
    kw.setdefault("tts_primary_url", DEAD)
    kw.setdefault("tts_fallback_url", tts)
    kw.setdefault("enable_preprocessing", False)
    settings = Settings(_env_file=None, stt_url=stt, enable_guardrails=False, llm_fallback_url=None,
                        memory_db_path=tmp_path / "memory.sqlite3", breaker_reset_s=600, **kw)
    agent = Agent(settings, primary=model, fallback=None, tools=build_tools(settings),
                  system_prompt=load_system_prompt(settings))
    orch = Orchestrator(settings, agent=agent, memory=SqliteMemory(settings.memory_path()),
                        guard=Guardrails(settings), speech=Speech(settings))
    with serve_in_thread(create_app(settings, orchestrator=orch)) as url:
        while not orch.memory.ready():
            time.sleep(0.05)
        yield url


def decode(b64: str) -> tuple[int, float]:
    data, rate = sf.read(io.BytesIO(base64.b64decode(b64)))
    return rate, len(data) / rate


def fallbacks(stage: str, reason: str) -> float:
    return REGISTRY.get_sample_value("orchestrator_fallbacks_total",
                                     {"service": service(), "stage": stage, "reason": reason}) or 0.0


def sse_events(response: httpx.Response) -> list[tuple[str, dict, float]]:
    """(event, data, seconds since the request) of a text/event-stream."""
    t0 = time.perf_counter()
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:]), time.perf_counter() - t0))
    return events


def test_a_voice_turn_returns_transcript_answer_and_playable_audio(tmp_path, speech_urls):
    stt, tts = speech_urls
    model = ScriptedChatModel(script=[lambda msgs: say(f"Going forward. You said: {msgs[-1].content}")])
    before = fallbacks("tts", "unavailable")
    with orchestrator(tmp_path, model, stt, tts) as url:
        r = httpx.post(f"{url}/v1/voice/turn", files={"file": ("a.wav", SPEECH.read_bytes(), "audio/wav")},
                       data={"session_id": "voice-1"}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "go forward" in body["transcript"].lower() and "meters" in body["transcript"].lower()
    assert body["response"].startswith("Going forward. You said:") and body["session_id"] == "voice-1"
    rate, seconds = decode(body["audio"])
    assert rate == 22050 and seconds > 1.0  # Piper's voice, a real utterance
    assert body["tts_service"] == "tts" and body["tts_engine"] == "piper"  # the primary (dead) fell back
    assert fallbacks("tts", "unavailable") + fallbacks("tts", "circuit_open") >= before + 1
    for stage in ("stt", "agent", "tts", "total"):
        assert body["timings"][stage] > 0
    assert "preprocess" not in body["timings"]


def test_the_streamed_turn_sends_each_sentence_audio_before_the_answer_is_done(tmp_path, speech_urls):
    stt, tts = speech_urls
    three = "First sentence here. Second one follows now. And the third one ends it."
    model = ScriptedChatModel(script=[say(three)], delay_s=0)
    with orchestrator(tmp_path, model, stt, tts) as url:
        with httpx.stream("POST", f"{url}/v1/voice/turn/stream", timeout=120,
                          files={"file": ("a.wav", SPEECH.read_bytes(), "audio/wav")}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r)
    names = [e[0] for e in events]
    assert names[0] == "transcript" and names[-1] == "done"
    assert names[1:-1] == ["text", "audio"] * 3
    texts = [d["text"] for n, d, _ in events if n == "text"]
    assert texts == ["First sentence here.", "Second one follows now.", "And the third one ends it."]
    for n, d, _ in events:
        if n == "audio":
            assert decode(d["audio"])[1] > 0.3
    done = events[-1][1]
    assert done["response"] == three and done["transcript"].lower().startswith("go forward")
    assert done["timings"]["first_audio"] < done["timings"]["total"]


async def test_first_audio_does_not_wait_for_the_whole_answer(tmp_path, speech_urls):
    """The LLM streams slowly (a word every 0.15 s); the first sentence is spoken while it goes on."""
    stt, tts = speech_urls
    long = "Hello there. " + " ".join(["word"] * 30) + "."
    model = ScriptedChatModel(script=[say(long)])
    original = model._astream

    async def slow_stream(*a, **kw):
        async for chunk in original(*a, **kw):
            await asyncio.sleep(0.15)
            yield chunk

    object.__setattr__(model, "_astream", slow_stream)
    with orchestrator(tmp_path, model, stt, tts) as url:
        with httpx.stream("POST", f"{url}/v1/voice/turn/stream", timeout=120,
                          files={"file": ("a.wav", SPEECH.read_bytes(), "audio/wav")}) as r:
            events = sse_events(r)
    first_audio = next(t for n, _, t in events if n == "audio")
    done = next(t for n, _, t in events if n == "done")
    assert done - first_audio > 2.0  # 30 more words at 0.15 s each were still coming


def test_silence_is_answered_with_a_request_to_repeat(tmp_path, speech_urls):
    stt, tts = speech_urls
    buf = io.BytesIO()
    sf.write(buf, [0.0] * 16000, 16000, format="WAV", subtype="PCM_16")
    model = ScriptedChatModel(script=[say("never")])
    with orchestrator(tmp_path, model, stt, tts) as url:
        body = httpx.post(f"{url}/v1/voice/turn", files={"file": ("s.wav", buf.getvalue())}, timeout=120).json()
    assert body["transcript"] == "" and body["response"] == NO_SPEECH and model.calls == []
    assert decode(body["audio"])[1] > 0.5


def test_a_dead_preprocessor_is_skipped_and_the_raw_audio_transcribed(tmp_path, speech_urls):
    stt, tts = speech_urls
    before = fallbacks("preprocess", "unavailable")
    with orchestrator(tmp_path, ScriptedChatModel(script=[say("ok")]), stt, tts, enable_preprocessing=True,
                      preprocessor_url=DEAD) as url:
        body = httpx.post(f"{url}/v1/voice/turn", files={"file": ("a.wav", SPEECH.read_bytes())}, timeout=120).json()
    assert "forward" in body["transcript"].lower() and "preprocess" in body["timings"]
    assert fallbacks("preprocess", "unavailable") == before + 1


def test_preprocessing_is_chosen_per_turn_and_reported(tmp_path, speech_urls):
    stt, tts = speech_urls
    before = fallbacks("preprocess", "unavailable")
    with orchestrator(tmp_path, ScriptedChatModel(script=[say("ok")]), stt, tts, enable_preprocessing=True,
                      preprocessor_url=DEAD) as url:
        off = httpx.post(f"{url}/v1/voice/turn", files={"file": ("a.wav", SPEECH.read_bytes())},
                         data={"preprocess": "false"}, timeout=120).json()
        on = httpx.post(f"{url}/v1/voice/turn", files={"file": ("a.wav", SPEECH.read_bytes())},
                        data={"preprocess": "true"}, timeout=120).json()
        bad = httpx.post(f"{url}/v1/voice/turn", files={"file": ("a.wav", SPEECH.read_bytes())},
                         data={"preprocess": "maybe"}, timeout=120)
    assert "preprocess" not in off["timings"] and "denoised" not in off  # not asked: never called
    assert "preprocess" in on["timings"] and on["denoised"] is False  # asked, the preprocessor is down: raw audio
    assert fallbacks("preprocess", "unavailable") == before + 1
    assert bad.status_code == 422 and "preprocess" in bad.text


def test_the_turns_voice_goes_to_the_primary_tts(tmp_path, speech_urls):
    """Piper's tts as the primary (as in the base fleet): its own voice is used; a voice it does not have is
    refused there and the fallback speaks (counted), so the words are never lost; a malformed name is a 422."""
    stt, tts = speech_urls
    reasons = ("error", "unavailable", "circuit_open", "timeout")
    before = sum(fallbacks("tts", r) for r in reasons)
    with orchestrator(tmp_path, ScriptedChatModel(script=[say("Hello.")]), stt, tts, tts_primary_url=tts) as url:
        joe = httpx.post(f"{url}/mcp/transcript", json={"transcript": "Hi", "speak": True,
                                                         "voice": "en_US-joe-medium"}, timeout=120).json()
        unknown = httpx.post(f"{url}/mcp/transcript", json={"transcript": "Hi", "speak": True,
                                                             "voice": "no-such-voice"}, timeout=120).json()
        bad = httpx.post(f"{url}/v1/voice/turn", files={"file": ("a.wav", SPEECH.read_bytes())},
                         data={"voice": "../../etc/passwd;"}, timeout=120)
    assert joe["tts_service"] == "tts" and decode(joe["audio"])[1] > 0.2
    assert unknown["response"] == "Hello." and decode(unknown["audio"])[1] > 0.2
    assert sum(fallbacks("tts", r) for r in reasons) == before + 1  # the primary refused the voice only
    assert bad.status_code == 422 and "voice must be" in bad.json()["error"]["message"]


def test_no_tts_at_all_still_delivers_the_words(tmp_path, speech_urls):
    """Both TTS down: the answer is not lost; it comes as text, with a note / an audio_error event."""
    stt, _ = speech_urls
    model = ScriptedChatModel(script=[say("First part. Second part.")])
    with orchestrator(tmp_path, model, stt, DEAD, tts_fallback_url=DEAD) as url:
        body = httpx.post(f"{url}/v1/voice/turn", files={"file": ("a.wav", SPEECH.read_bytes())}, timeout=120).json()
        text = httpx.post(f"{url}/mcp/transcript", json={"transcript": "hi", "speak": True}, timeout=60).json()
        with httpx.stream("POST", f"{url}/v1/voice/turn/stream", timeout=120,
                          files={"file": ("a.wav", SPEECH.read_bytes())}) as r:
            events = sse_events(r)
    assert body["response"] == "First part. Second part." and "audio" not in body
    assert any(n.startswith("speech unavailable") for n in body["notes"])
    assert text["response"] == "First part. Second part." and "audio" not in text
    names = [n for n, _, _ in events]
    assert names == ["transcript", "text", "audio_error", "text", "audio_error", "done"]


@pytest.mark.parametrize("files, status, fragment", [
    (None, 422, "multipart field `file`"),
    ({"file": ("a.wav", b"")}, 422, "empty"),
    ({"file": ("a.wav", b"this is not audio at all" * 10)}, 422, "audio was refused"),
])
def test_bad_audio_is_a_clear_4xx(tmp_path, speech_urls, files, status, fragment):
    stt, tts = speech_urls
    with orchestrator(tmp_path, ScriptedChatModel(), stt, tts) as url:
        r = httpx.post(f"{url}/v1/voice/turn", files=files, data={"session_id": "s"} if files is None else None,
                       timeout=60)
        streamed = httpx.post(f"{url}/v1/voice/turn/stream", files=files, timeout=60)
    for resp in (r, streamed):
        assert resp.status_code == status and fragment in resp.json()["error"]["message"], resp.text


def test_too_large_audio_is_413(tmp_path, speech_urls):
    stt, tts = speech_urls
    with orchestrator(tmp_path, ScriptedChatModel(), stt, tts, voice_max_upload_bytes=2000) as url:
        r = httpx.post(f"{url}/v1/voice/turn", files={"file": ("a.wav", SPEECH.read_bytes())}, timeout=60)
    assert r.status_code == 413 and "VOICE_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]


@pytest.mark.parametrize("text, sentences, rest", [
    ("Sure, the answer is", [], "Sure, the answer is"),  # too short a clause to stand alone
    ("Well, the weather today is sunny, with", ["Well, the weather today is sunny,"], "with"),
    ("It is sunny. More", ["It is sunny."], "More"),
])
def test_the_first_piece_may_be_a_clause(text, sentences, rest):
    got, left = split_sentences(text, first=True)
    assert got == sentences and left == rest


@pytest.mark.parametrize("text, final, sentences, rest", [
    ("Hello there. How are", False, ["Hello there."], "How are"),
    ("Hello there. How are you?", True, ["Hello there.", "How are you?"], ""),
    ("It costs 3.50 dollars", False, [], "It costs 3.50 dollars"),
    ("one, " * 60, False, None, None),
])
def test_split_sentences(text, final, sentences, rest):
    got, left = split_sentences(text, final=final)
    if sentences is None:  # a long run-on is cut so speech can start
        assert got and all(len(s) <= 220 for s in got)
    else:
        assert got == sentences and left == rest
