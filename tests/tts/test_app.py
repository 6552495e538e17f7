"""tts routes against the real Piper engine (bundled en_US-joe-medium), through real HTTP and the real
`openai` client. Route-only behaviour (streaming order, not-ready) uses a fake engine that implements
the same protocol."""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from services.common.errors import InvalidRequestError
from services.common.testing import serve_in_thread
from services.tts.app import create_app
from services.tts.engine import SynthesisRequest, TtsEngine, VoiceInfo
from services.tts.settings import Settings

THREE = "The kettle is on. Dinner is at seven tonight. Please bring the blue umbrella."


@pytest.fixture(scope="module")
def url():
    app = create_app(Settings(_env_file=None, tts_max_text_chars=300))
    with serve_in_thread(app) as base:
        for _ in range(200):
            if httpx.get(f"{base}/health/ready").status_code == 200:
                break
            threading.Event().wait(0.05)
        yield base


def decode(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    return audio, rate


def test_synthesize_streams_a_wav_with_rate_in_headers(url):
    r = httpx.post(f"{url}/synthesize", json={"text": THREE}, timeout=60)
    assert r.status_code == 200
    assert r.headers["x-sample-rate"] == "22050" and r.headers["x-tts-engine"] == "piper"
    assert r.headers["x-tts-voice"] == "en_US-joe-medium"
    audio, rate = decode(r.content)
    assert rate == 22050
    assert 2.5 < len(audio) / rate < 12  # three short sentences
    assert np.abs(audio).max() > 0.05  # not silence


def test_non_streamed_wav_has_exact_sizes(url):
    r = httpx.post(f"{url}/synthesize", json={"text": "Hello world.", "stream": False}, timeout=60)
    riff_size = struct.unpack("<I", r.content[4:8])[0]
    assert riff_size == len(r.content) - 8
    audio, _ = decode(r.content)
    assert len(audio) > 0


def test_pcm_is_raw_int16_at_the_stated_rate(url):
    wav = httpx.post(f"{url}/synthesize", json={"text": "Hello world.", "noise_scale": 0, "noise_w": 0}, timeout=60)
    pcm = httpx.post(f"{url}/synthesize", json={"text": "Hello world.", "format": "pcm", "noise_scale": 0,
                                                "noise_w": 0}, timeout=60)
    assert pcm.headers["content-type"] == "audio/pcm" and pcm.headers["x-audio-format"] == "s16le"
    samples = np.frombuffer(pcm.content, dtype="<i2")
    audio, _ = decode(wav.content)
    assert len(samples) == len(audio)  # same audio, no header bytes counted as samples


def test_speed_and_length_scale_are_honoured(url):
    def seconds(**kw):
        r = httpx.post(f"{url}/synthesize", json={"text": "One two three four five.", "noise_w": 0, **kw}, timeout=60)
        audio, rate = decode(r.content)
        return len(audio) / rate

    normal, fast, slow = seconds(), seconds(speed=2.0), seconds(length_scale=2.0)
    assert fast < normal * 0.7 and slow > normal * 1.5


@pytest.mark.parametrize(
    "body, param",
    [
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * 301}, "text"),
        ({"text": "hi", "voice": "nobody"}, "voice"),
        ({"text": "hi", "speed": 10}, "speed"),
        ({"text": "hi", "noise_scale": -1}, "noise_scale"),
        ({"text": "hi", "format": "aiff"}, "format"),
        ({"text": "hi", "pitch": 3}, "pitch"),  # accepted-and-ignored is not an option
    ],
)
def test_bad_input_is_a_4xx_that_says_what_is_accepted(url, body, param):
    r = httpx.post(f"{url}/synthesize", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and param in (err["param"] or "") + err["message"]


def test_unknown_voice_lists_the_voices(url):
    r = httpx.post(f"{url}/synthesize", json={"text": "hi", "voice": "nobody"})
    assert "en_US-joe-medium" in r.json()["error"]["message"]


def test_voices_lists_the_bundled_voice(url):
    body = httpx.get(f"{url}/voices").json()
    assert body["default"] == "en_US-joe-medium"
    assert {"name": "en_US-joe-medium", "language": "en_US", "quality": "medium", "sample_rate_hz": 22050,
            "speakers": []} in body["voices"]


# --- the real openai client ------------------------------------------------------------------------------


@pytest.fixture
def oai(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus"])
def test_openai_client_synthesizes(oai, fmt):
    audio = oai.audio.speech.create(model="tts-1", voice="en_US-joe-medium", input="Hello from the fleet.",
                                    response_format=fmt)
    samples, rate = decode(audio.content)
    assert 0.5 < len(samples) / rate < 6
    assert np.abs(samples).max() > 0.05


def test_openai_pcm_is_24khz_and_streams(oai):
    with oai.audio.speech.with_streaming_response.create(
        model="tts-1", voice="en_US-joe-medium", input=THREE, response_format="pcm"
    ) as response:
        data = b"".join(response.iter_bytes())
    seconds = len(data) / 2 / 24_000
    assert 2.5 < seconds < 12


def test_openai_client_gets_openai_shaped_errors(oai):
    with pytest.raises(openai.UnprocessableEntityError) as info:
        oai.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert "available voices" in info.value.message
    with pytest.raises(openai.UnprocessableEntityError):
        oai.audio.speech.create(model="gpt-4o-mini-tts", voice="en_US-joe-medium", input="hi")
    with pytest.raises(openai.UnprocessableEntityError):
        oai.audio.speech.create(model="tts-1", voice="en_US-joe-medium", input="hi", instructions="whisper")


# --- route behaviour with a fake engine --------------------------------------------------------------------


class GatedEngine:
    """Implements TtsEngine; after the first sentence it blocks until `gate` is set."""

    name = "gated"
    default_voice = "v"

    def __init__(self, loaded: bool = True):
        self.gate = threading.Event()
        self.loaded = loaded

    def voices(self):
        return [self.voice_info(None)]

    def voice_info(self, voice):
        if voice not in (None, "v"):
            raise InvalidRequestError("unknown voice", param="voice")
        return VoiceInfo(name="v", language="en", quality="x", sample_rate_hz=16000, path=None)

    def sample_rate_for(self, voice):
        return 16000

    def validate(self, req):
        self.voice_info(req.voice)

    async def start(self):
        pass

    def ready(self):
        return self.loaded

    async def aclose(self):
        pass

    def describe(self):
        return {"engine": "gated"}

    def synthesize_sentences(self, req: SynthesisRequest) -> Iterator[np.ndarray]:
        yield np.full(1600, 1000, dtype=np.int16)
        if not self.gate.wait(10):
            raise RuntimeError("test gate never opened")
        yield np.full(1600, 2000, dtype=np.int16)


def test_fake_engine_satisfies_the_protocol():
    assert isinstance(GatedEngine(), TtsEngine)


def test_first_sentence_arrives_before_the_rest_is_synthesized():
    engine = GatedEngine()
    with serve_in_thread(create_app(Settings(_env_file=None), engine=engine)) as base:
        with httpx.stream("POST", f"{base}/synthesize", json={"text": "One. Two.", "format": "pcm"}, timeout=20) as r:
            chunks = r.iter_raw()
            first = next(chunks)
            # the engine is still blocked on sentence two, yet sentence one is here
            assert not engine.gate.is_set()
            assert np.frombuffer(first, dtype="<i2")[0] == 1000
            engine.gate.set()
            rest = b"".join(chunks)
    samples = np.frombuffer(first + rest, dtype="<i2")
    assert len(samples) == 3200 and samples[-1] == 2000


def test_not_ready_engine_answers_503_with_retry_after():
    with serve_in_thread(create_app(Settings(_env_file=None), engine=GatedEngine(loaded=False))) as base:
        r = httpx.post(f"{base}/synthesize", json={"text": "hi"})
        ready = httpx.get(f"{base}/health/ready")
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_not_ready"
    assert int(r.headers["retry-after"]) >= 1
    assert ready.status_code == 503
