"""testing-ui against real services on free ports: Piper tts and whisper stt as themselves, orchestrator-enhanced
(and a second one as the plain-orchestrator fallback) on scripted chat models, so what is checked is the UI's
wiring: streamed turns fill the view as they arrive, 4xx messages are shown as they are, a dead primary is
replaced by the fallback and the UI says so. The page itself is driven through gradio_client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file

from services.common.testing import audio_file, serve_in_thread, wait_ready
from services.orchestrator_enhanced.agent import Agent, load_system_prompt
from services.orchestrator_enhanced.app import create_app as create_orchestrator
from services.orchestrator_enhanced.guard import Guardrails
from services.orchestrator_enhanced.memory import SqliteMemory
from services.orchestrator_enhanced.pipeline import Orchestrator
from services.orchestrator_enhanced.settings import Settings as OrchSettings
from services.orchestrator_enhanced.speech import Speech
from services.orchestrator_enhanced.testing import ScriptedChatModel, say
from services.orchestrator_enhanced.tools import build_tools
from services.stt.app import create_app as create_stt_app
from services.stt.settings import Settings as SttSettings
from services.testing_ui.app import create_app
from services.testing_ui.client import FALLBACK, PRIMARY, FleetClient
from services.testing_ui.settings import Settings
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
def orchestrator(tmp_path: Path, model: ScriptedChatModel, stt: str, tts: str, name: str, **kw) -> Iterator[str]:
    kw.setdefault("enable_preprocessing", False)
    settings = OrchSettings(_env_file=None, stt_url=stt, tts_primary_url=DEAD, tts_fallback_url=tts,
                            enable_guardrails=False, llm_fallback_url=None,
                            memory_db_path=tmp_path / f"{name}.sqlite3", breaker_reset_s=600, **kw)
    agent = Agent(settings, primary=model, fallback=None, tools=build_tools(settings),
                  system_prompt=load_system_prompt(settings))
    orch = Orchestrator(settings, agent=agent, memory=SqliteMemory(settings.memory_path()),
                        guard=Guardrails(settings), speech=Speech(settings))
    with serve_in_thread(create_orchestrator(settings, orchestrator=orch)) as url:
        while not orch.memory.ready():
            time.sleep(0.05)
        yield url


def ui_settings(primary: str, fallback: str | None = None, **kw) -> Settings:
    return Settings(_env_file=None, orchestrator_primary_url=primary, orchestrator_fallback_url=fallback,
                    voices_url=None, **kw)


# --- settings ----------------------------------------------------------------------------------------------


def test_the_page_listens_on_loopback_unless_it_has_a_login():
    assert Settings(_env_file=None).host == "127.0.0.1" and Settings(_env_file=None).login() is None
    with pytest.raises(ValueError, match="UI_USERNAME and UI_PASSWORD"):
        Settings(_env_file=None, host="0.0.0.0")
    with pytest.raises(ValueError, match="both"):
        Settings(_env_file=None, ui_username="dev")
    s = Settings(_env_file=None, host="0.0.0.0", ui_username="dev", ui_password="s3cret")
    assert s.login() == ("dev", "s3cret")


# --- the client ---------------------------------------------------------------------------------------------


def test_a_voice_turn_fills_the_view_event_by_event(tmp_path, speech_urls):
    stt, tts = speech_urls
    model = ScriptedChatModel(script=[say("Going forward now. Ten meters it is. Anything else?")])
    with orchestrator(tmp_path, model, stt, tts, "primary") as url:
        client = FleetClient(ui_settings(url))
        views = [(v.transcript, len(v.sentences), len(v.audio), v.done) for v in client.voice_turn(SPEECH, "s-1")]
        final = views[-1]
    # the transcript came first, then sentences and their audio one by one, before the turn was done
    assert views[0][0] and "forward" in views[0][0].lower() and views[0][3] is False
    assert any(n_audio >= 1 and not done for _, _, n_audio, done in views)
    assert final[1] == 3 and final[2] == 3 and final[3] is True


def test_the_view_holds_engines_timings_audio_and_the_session(tmp_path, speech_urls):
    stt, tts = speech_urls
    model = ScriptedChatModel(script=[say("Hello there. Nice to meet you.")])
    with orchestrator(tmp_path, model, stt, tts, "primary") as url:
        *_, view = FleetClient(ui_settings(url)).voice_turn(SPEECH, "s-2")
    assert view.served_by == PRIMARY and view.fallback_reason is None and view.error is None
    assert view.session_id == "s-2" and view.answer == "Hello there. Nice to meet you."
    assert view.engines["tts"] == "tts (piper)" and view.engines["llm"]
    assert {"stt", "agent", "tts", "first_audio", "total"} <= set(view.timings)
    rate, samples = view.wav()
    assert rate == 22050 and samples.dtype == np.int16 and len(samples) > rate  # two sentences, > 1 s
    assert view.blocked is False


def test_a_text_turn_answers_and_speaks(tmp_path, speech_urls):
    stt, tts = speech_urls
    with orchestrator(tmp_path, ScriptedChatModel(script=[say("Paris.")]), stt, tts, "primary") as url:
        *_, view = FleetClient(ui_settings(url)).text_turn("What is the capital of France?", "s-3")
    assert view.answer == "Paris." and view.transcript == "What is the capital of France?"
    assert view.wav() is not None and view.done and view.error is None


def test_the_denoise_switch_and_voice_go_with_the_turn(tmp_path, speech_urls):
    stt, tts = speech_urls
    with orchestrator(tmp_path, ScriptedChatModel(script=[say("Fine.")]), stt, tts, "primary",
                      enable_preprocessing=True, preprocessor_url=DEAD) as url:
        client = FleetClient(ui_settings(url))
        *_, asked = client.voice_turn(SPEECH, "s-8", preprocess=True, voice="en_US-joe-medium")
        *_, off = client.voice_turn(SPEECH, "s-8", preprocess=False)
    assert asked.engines["denoise"].startswith("audio-preprocessor (left as recorded") and "preprocess" in asked.timings
    assert "denoise" not in off.engines and "preprocess" not in off.timings
    assert asked.answer == "Fine." and asked.wav() is not None  # a voice the primary (dead here) would have used


def test_refused_input_shows_the_orchestrators_message_and_no_fallback(tmp_path, speech_urls):
    stt, tts = speech_urls
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are my meeting notes, not a recording\n" * 20)
    with orchestrator(tmp_path, ScriptedChatModel(), stt, tts, "primary") as url, \
            orchestrator(tmp_path, ScriptedChatModel(), stt, tts, "fallback") as fallback:
        *_, view = FleetClient(ui_settings(url, fallback)).voice_turn(not_audio, "s-4")
    assert view.done and view.served_by == PRIMARY and view.fallback_reason is None
    assert view.error and "(4" in view.error and "audio" in view.error.lower()  # the 4xx said as it came


def test_a_dead_primary_is_replaced_by_the_fallback_and_the_view_says_why(tmp_path, speech_urls):
    stt, tts = speech_urls
    with orchestrator(tmp_path, ScriptedChatModel(script=[say("Still here.")]), stt, tts, "fallback") as fallback:
        client = FleetClient(ui_settings(DEAD, fallback))
        *_, view = client.voice_turn(SPEECH, "s-5")
        status = {name: state for name, _, state in client.status()}
    assert view.served_by == FALLBACK and view.answer == "Still here."
    assert PRIMARY in view.fallback_reason and "unreachable" in view.fallback_reason
    assert status[PRIMARY].startswith("unreachable") and status[FALLBACK] == "ready"


def test_nothing_up_says_which_services_are_down():
    *_, view = FleetClient(ui_settings(DEAD, "http://127.0.0.1:10")).text_turn("Hello", "s-6")
    assert view.done and view.served_by == ""
    assert "orchestrator-enhanced (http://127.0.0.1:9): unreachable" in view.error
    assert "orchestrator (http://127.0.0.1:10): unreachable" in view.error


def test_the_fleet_token_is_sent_to_the_orchestrators(tmp_path, speech_urls):
    stt, tts = speech_urls
    with orchestrator(tmp_path, ScriptedChatModel(script=[say("Authorised.")]), stt, tts, "primary",
                      service_auth_token="fleet-secret") as url:
        *_, without = FleetClient(ui_settings(url)).text_turn("Hi", "s-7")
        *_, with_token = FleetClient(ui_settings(url, service_auth_token="fleet-secret")).text_turn("Hi", "s-7")
    assert without.error and "401" in without.error
    assert with_token.answer == "Authorised."


def text_of(message: dict) -> str:
    """A Chatbot message's text (Gradio 6 gives content as a list of typed parts)."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


# --- the page, through gradio_client --------------------------------------------------------------------------


@pytest.fixture
def ui(tmp_path, speech_urls) -> Iterator[tuple[Client, str]]:
    stt, tts = speech_urls
    model = ScriptedChatModel(script=[say("Going forward ten meters. Done.")])
    with orchestrator(tmp_path, model, stt, tts, "primary") as url, \
            serve_in_thread(create_app(ui_settings(url, service_auth_token="fleet-secret"))) as page:
        yield Client(page, verbose=False), page


def test_the_page_is_a_service_like_the_others(ui):
    _, page = ui
    assert httpx.get(f"{page}/health/live").json()["service"] == "testing-ui"
    ready = httpx.get(f"{page}/health/ready").json()
    assert ready["status"] == "ready" and ready["dependencies"][PRIMARY]["ok"] is True
    assert ready["dependencies"][PRIMARY]["required"] is False  # a dead orchestrator is shown in the page, not a 503
    assert 'route="/health/ready"' in httpx.get(f"{page}/metrics").text
    assert httpx.get(page).status_code == 200  # the page needs no fleet token: it is for people


def test_gradio_client_voice_turn_returns_transcript_answer_and_playable_audio(ui, tmp_path, speech_urls):
    stt, tts = speech_urls
    with orchestrator(tmp_path, ScriptedChatModel(script=[say("Going forward ten meters. Done.")]), stt, tts,
                      "open") as url, serve_in_thread(create_app(ui_settings(url))) as page:
        client = Client(page, verbose=False)
        chat, transcript, answer, spoken, stages, timings = client.predict(handle_file(str(SPEECH)), [], "", True,
                                                                           api_name="/voice_turn")
    assert "forward" in transcript.lower() and answer == "Going forward ten meters. Done."
    audio, rate = sf.read(spoken)
    assert rate > 8000 and len(audio) > rate / 2
    assert "Served by:** orchestrator-enhanced" in stages and "Guardrails:** passed" in stages
    assert [m["role"] for m in chat] == ["user", "assistant"] and text_of(chat[1]) == answer
    assert {row[0] for row in timings["data"]} >= {"stt", "agent", "tts"}


def test_gradio_client_text_turn_and_a_new_conversation(tmp_path, speech_urls):
    stt, tts = speech_urls
    with orchestrator(tmp_path, ScriptedChatModel(script=[say("Paris.")]), stt, tts, "open") as url, \
            serve_in_thread(create_app(ui_settings(url))) as page:
        client = Client(page, verbose=False)
        chat, _, answer, spoken, _, _ = client.predict("Capital of France?", [], "", api_name="/text_turn")
        cleared, label = client.predict(api_name="/new_conversation")  # the session id itself is page state
    assert answer == "Paris." and spoken and text_of(chat[-1]) == "Paris."
    assert cleared == [] and "Conversation `ui-" in label
