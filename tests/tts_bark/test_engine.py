"""tts-bark engine layer: the real `BarkEngine` on a tiny random-weight checkpoint (loaded through the same
code as suno/bark), sentence splitting, and protocol conformance of every `SentenceTts`."""

from __future__ import annotations

import asyncio
import shutil
import threading

import numpy as np
import pytest
from transformers import BarkModel, BarkProcessor

from services.common.errors import EngineNotReadyError, InvalidRequestError
from services.common.hub import ModelNotFoundError
from services.tts_bark.engine import (
    BARK_VOICE_LABELS,
    SENTENCE_GAP_S,
    STANDARD_BARK_VOICES,
    BarkEngine,
    FallbackTts,
    PiperClient,
    SentenceTts,
    join_sentences,
    split_sentences,
)
from services.tts_bark.settings import Settings
from services.tts_bark.testing import FakeSentenceTts

from .conftest import SEMANTIC_TOKENS, SENTENCE_SAMPLES, bark_settings


@pytest.fixture(scope="module")
def engine(bark_dir):
    eng = BarkEngine(bark_settings(bark_dir, "http://127.0.0.1:9"))
    asyncio.run(eng.start())
    return eng


# --- the checkpoint the tests build ----------------------------------------------------------------------------


def test_tiny_checkpoint_round_trips_like_suno(bark_dir):
    model = BarkModel.from_pretrained(bark_dir)
    gen = model.generation_config
    assert gen.semantic_config["max_new_tokens"] == SEMANTIC_TOKENS
    assert gen.sample_rate == 24_000 and gen.codebook_size == model.config.codec_config.codebook_size
    assert gen.coarse_acoustics_config["n_coarse_codebooks"] == 2
    processor = BarkProcessor.from_pretrained(bark_dir)
    assert set(STANDARD_BARK_VOICES) <= set(processor.available_voice_presets)
    prompt = processor("hi", voice_preset="v2/en_speaker_3")["history_prompt"]
    assert prompt["semantic_prompt"].ndim == 1 and prompt["coarse_prompt"].shape[0] == 2
    assert prompt["fine_prompt"].shape[0] == 8


# --- BarkEngine --------------------------------------------------------------------------------------------------


def test_bark_engine_loads_presets_and_describes_itself(engine):
    assert engine.ready()
    info = engine.describe()
    assert info["engine"] == "bark" and info["status"] == "ready" and info["device"] == "cpu"
    assert info["dtype"] == "float32" and info["sample_rate_hz"] == 24_000
    assert info["max_semantic_tokens"] == SEMANTIC_TOKENS
    voices = {v.name: v.label for v in engine.voices()}
    assert list(voices) == list(STANDARD_BARK_VOICES)  # v2/de_speaker_0 is in the checkpoint but not offered
    for name, label in BARK_VOICE_LABELS.items():
        assert voices[name] == label
    assert voices["v2/en_speaker_4"] == "English speaker 4"


async def test_bark_engine_speaks_a_sentence_at_24khz(engine):
    for voice in (None, "v2/en_speaker_6"):
        audio = await engine.synthesize("Hello world, this is Bark.", voice)
        assert audio.sample_rate == 24_000 and audio.channels == 1
        assert audio.frames == SENTENCE_SAMPLES
        assert np.isfinite(audio.samples).all() and np.abs(audio.samples).max() > 0


async def test_a_cancelled_generation_stops_and_the_engine_keeps_working(engine):
    cancel = threading.Event()
    cancel.set()  # as BarkEngine.synthesize does when its caller gives up (a sentence timeout)
    assert await asyncio.to_thread(engine._generate, "Hello there.", "v2/en_speaker_1", cancel) is None
    audio = await engine.synthesize("Hello there.", None)
    assert audio.frames == SENTENCE_SAMPLES


async def test_bark_engine_refuses_what_it_cannot_do(engine):
    with pytest.raises(InvalidRequestError, match="speed"):
        await engine.synthesize("Hi.", None, speed=1.5)
    with pytest.raises(InvalidRequestError, match="v2/en_speaker_0"):
        await engine.synthesize("Hi.", "v2/de_speaker_0")


async def test_bark_engine_is_not_ready_before_start_and_offers_the_standard_voices(bark_dir):
    eng = BarkEngine(bark_settings(bark_dir, "http://127.0.0.1:9"))
    assert not eng.ready() and eng.describe()["status"] == "loading"
    assert [v.name for v in eng.voices()] == list(STANDARD_BARK_VOICES)
    with pytest.raises(EngineNotReadyError):
        await eng.synthesize("Hi.", None)


@pytest.mark.parametrize("model, needle", [("/nonexistent/bark", "does not exist"),
                                           ("suno/bark", "not in the Hugging Face cache")])
async def test_bark_engine_without_a_checkpoint_fails_to_start_with_the_reason(model, needle, tmp_path):
    settings = Settings(_env_file=None, bark_model=model, bark_allow_download=False)
    eng = BarkEngine(settings)
    with pytest.raises(ModelNotFoundError, match=needle):
        await eng.start()
    assert not eng.ready() and needle in eng.describe()["status"]


async def test_a_preset_missing_from_the_checkpoint_is_skipped_unless_it_is_the_default(bark_dir, tmp_path):
    copy = tmp_path / "bark"
    shutil.copytree(bark_dir, copy)
    (copy / "speaker_embeddings" / "v2" / "en_speaker_9_fine_prompt.npy").unlink()
    eng = BarkEngine(bark_settings(copy, "http://127.0.0.1:9"))
    await eng.start()
    assert [v.name for v in eng.voices()] == list(STANDARD_BARK_VOICES[:9])
    eng = BarkEngine(bark_settings(copy, "http://127.0.0.1:9", bark_voice_preset="v2/en_speaker_9"))
    with pytest.raises(RuntimeError, match="BARK_VOICE_PRESET=v2/en_speaker_9 is not among"):
        await eng.start()


# --- sentences ----------------------------------------------------------------------------------------------------


def test_long_text_is_split_into_sentences_and_nothing_is_dropped():
    text = ("Dr. Smith arrived at 3.5 past noon. The price is $4.99, e.g. cheap! Is it? "
            "Yes.\nA new line starts here")
    pieces = split_sentences(text, 180)
    assert pieces == ["Dr. Smith arrived at 3.5 past noon.", "The price is $4.99, e.g. cheap!", "Is it?", "Yes.",
                      "A new line starts here"]
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "").replace("\n", "")


def test_over_long_sentences_are_cut_at_clauses_then_words():
    clause = "the quick brown fox jumps over the lazy dog"
    sentence = ", ".join([clause] * 8) + "."
    pieces = split_sentences(sentence, 100)
    assert len(pieces) > 1 and all(len(p) <= 100 for p in pieces)
    assert all(p.endswith(",") for p in pieces[:-1])  # cut after commas
    words = " ".join(["word"] * 60)
    pieces = split_sentences(words, 50)
    assert all(len(p) <= 50 for p in pieces) and " ".join(pieces) == words  # cut between words


def test_join_puts_a_short_silence_between_sentences():
    parts = [FakeSentenceTts(seconds=0.5) for _ in range(3)]
    audio = [asyncio.run(_speak(p)) for p in parts]
    joined = join_sentences(audio, 24_000)
    assert joined.frames == 3 * 12_000 + 2 * int(SENTENCE_GAP_S * 24_000)
    assert np.all(joined.samples[12_000:12_000 + 6000] == 0)


async def _speak(fake: FakeSentenceTts):
    await fake.start()
    return await fake.synthesize("x", None)


# --- protocol conformance ---------------------------------------------------------------------------------------


def test_every_engine_implements_the_protocol(bark_dir):
    settings = bark_settings(bark_dir, "http://127.0.0.1:9")
    piper = PiperClient(settings)
    fake: SentenceTts = FakeSentenceTts()
    for eng in (BarkEngine(settings), piper, fake, FallbackTts(settings, fake, piper)):
        assert isinstance(eng, SentenceTts), type(eng).__name__
