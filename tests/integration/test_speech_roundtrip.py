"""Speech in and out together: text -> tts -> stt gives the words back, through the real `openai`
client against the real services (Piper en_US-joe-medium, whisper tiny.en), each on its own port. stt runs
with its default ENABLE_PREPROCESSING=true against a real audio-preprocessor (DeepFilterNet3), so the
default pipeline is what is tested."""

from __future__ import annotations

import io
import re

import jiwer
import openai
import pytest

from prometheus_client import REGISTRY

from services.audio_preprocessor.app import create_app as create_preprocessor
from services.audio_preprocessor.settings import Settings as PreSettings
from services.common.testing import serve_in_thread, wait_ready
from services.stt.app import create_app as create_stt
from services.stt.settings import Settings as SttSettings
from services.tts.app import create_app as create_tts
from services.tts.settings import Settings as TtsSettings

pytestmark = pytest.mark.integration

SENTENCES = [
    "Please turn off the lights in the kitchen.",
    "What is the weather like tomorrow morning?",
    "Set an alarm for seven thirty.",
    "Remind me to call my sister after dinner.",
    "Play some quiet music in the living room.",
    "How long does it take to drive to the airport?",
    "Add milk and bread to my shopping list.",
    "The meeting has been moved to Thursday afternoon.",
    "Send a message to the team that I will be late.",
    "Open the garage door and switch on the porch light.",
]


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())



def counter(name: str, **labels: str) -> float:
    """Sum of a counter over the samples matching ``labels`` (every service of this process shares a registry)."""
    return sum(s.value for m in REGISTRY.collect() for s in m.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def clients():
    with serve_in_thread(create_preprocessor(PreSettings(_env_file=None))) as pre_url, \
            serve_in_thread(create_tts(TtsSettings(_env_file=None))) as tts_url:
        stt_settings = SttSettings(_env_file=None, preprocessor_url=pre_url)
        assert stt_settings.enable_preprocessing, "the default pipeline denoises before transcribing"
        with serve_in_thread(create_stt(stt_settings)) as stt_url:
            for url in (pre_url, tts_url, stt_url):
                wait_ready(url, timeout_s=60)
            yield (openai.OpenAI(base_url=f"{tts_url}/v1", api_key="x", max_retries=0),
                   openai.OpenAI(base_url=f"{stt_url}/v1", api_key="x", max_retries=0))


def test_text_to_speech_to_text_keeps_the_words(clients):
    tts, stt = clients
    denoised_before = counter("requests_total", route="/denoise", status="200")
    fallbacks_before = counter("engine_fallbacks_total", engine_from="audio-preprocessor")
    hypotheses = []
    for sentence in SENTENCES:
        speech = tts.audio.speech.create(model="tts-1", voice="en_US-joe-medium", input=sentence,
                                         response_format="wav")
        result = stt.audio.transcriptions.create(model="whisper-1", file=("speech.wav", io.BytesIO(speech.content)),
                                                 language="en")
        hypotheses.append(normalise(result.text))
    wer = jiwer.wer([normalise(s) for s in SENTENCES], hypotheses)
    print(f"round-trip WER over {len(SENTENCES)} sentences (denoised on the way): {wer:.3f}")
    assert wer <= 0.15, list(zip(SENTENCES, hypotheses))
    # every upload went through the preprocessor, none fell back to raw audio
    assert counter("requests_total", route="/denoise", status="200") - denoised_before == len(SENTENCES)
    assert counter("engine_fallbacks_total", engine_from="audio-preprocessor") == fallbacks_before


def test_openai_client_transcribes_with_every_response_format(clients):
    tts, stt = clients
    wav = tts.audio.speech.create(model="tts-1", voice="en_US-joe-medium", input="Good morning. The coffee is ready.",
                                  response_format="wav").content
    verbose = stt.audio.transcriptions.create(model="whisper-1", file=("a.wav", io.BytesIO(wav)),
                                              response_format="verbose_json",
                                              timestamp_granularities=["word", "segment"])
    assert "coffee" in verbose.text.lower()
    assert verbose.language in ("en", "english") and verbose.duration > 1
    assert verbose.words and verbose.segments
    assert all(a.start <= b.start for a, b in zip(verbose.words, verbose.words[1:]))
    text = stt.audio.transcriptions.create(model="whisper-1", file=("a.wav", io.BytesIO(wav)), response_format="text")
    assert "coffee" in str(text).lower()
    srt = stt.audio.transcriptions.create(model="whisper-1", file=("a.wav", io.BytesIO(wav)), response_format="srt")
    assert re.search(r"00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}", str(srt))
    vtt = stt.audio.transcriptions.create(model="whisper-1", file=("a.wav", io.BytesIO(wav)), response_format="vtt")
    assert str(vtt).startswith("WEBVTT")
