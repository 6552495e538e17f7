"""MetricGAN+ denoiser through the real speechbrain loading path, with a random-weight model of real size.

No weights can be downloaded here, so the module builds a model dir in speechbrain's published layout for
``speechbrain/metricgan-plus-voicebank``: ``hyperparams.yaml`` (its inference recipe: STFT/ISTFT, spectral
magnitude, resynthesis, the MetricGAN generator, ``modules`` and a ``pretrainer`` whose ``paths`` name the
checkpoint by hub path) and ``enhance_model.ckpt``, the ``state_dict`` of a randomly initialised
``EnhancementGenerator`` of the published size (1,895,514 parameters; the published file is 7,586,021 bytes).
The engine loads it with ``SpectralMaskEnhancement.from_hparams(source=<dir>, savedir=<dir2>)`` exactly as
for real weights; the tests check the loaded generator holds the checkpoint's tensors.

Numbers measured on the 2-core CI CPU are in the comments.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from services.audio_preprocessor.engine import Denoiser
from services.audio_preprocessor.metricgan import (
    MODEL_FILES,
    NATIVE_RATE_HZ,
    MetricGanEngine,
    ensure_torchaudio,
    metricgan_weights_available,
)
from services.common.audio import AudioSegment
from services.common.errors import EngineFailedError, EngineNotReadyError, InvalidAudioError

# The inference hyperparams.yaml of speechbrain/metricgan-plus-voicebank, reconstructed from speechbrain's
# Voicebank MetricGAN+ recipe (hparams/train.yaml, models/MetricGAN.yaml) and the model card, since the hub
# file cannot be fetched here. The keys are the ones SpectralMaskEnhancement requires (compute_stft,
# spectral_magnitude, resynth; enhance_model in modules). The recipe's compute_STFT/compute_ISTFT are
# written compute_stft/compute_istft, because from_hparams refuses a file without compute_stft.
PUBLISHED_HPARAMS = """\
# Model: MetricGAN+ for speech enhancement (https://arxiv.org/abs/2104.03538), inference recipe.

# FFT parameters
Sample_rate: 16000
Win_length: 32
Hop_length: 16
N_fft: 512
window_fn: !name:torch.hamming_window

compute_stft: !new:speechbrain.processing.features.STFT
    sample_rate: !ref <Sample_rate>
    win_length: !ref <Win_length>
    hop_length: !ref <Hop_length>
    n_fft: !ref <N_fft>
    window_fn: !ref <window_fn>

compute_istft: !new:speechbrain.processing.features.ISTFT
    sample_rate: !ref <Sample_rate>
    win_length: !ref <Win_length>
    hop_length: !ref <Hop_length>
    window_fn: !ref <window_fn>

spectral_magnitude: !name:speechbrain.processing.features.spectral_magnitude
    power: 0.5

resynth: !name:speechbrain.processing.signal_processing.resynthesize
    stft: !ref <compute_stft>
    istft: !ref <compute_istft>
    normalize_wavs: False

enhance_model: !new:speechbrain.lobes.models.MetricGAN.EnhancementGenerator
    input_size: !ref <N_fft> // 2 + 1
    hidden_size: 200
    num_layers: 2
    dropout: 0

modules:
    enhance_model: !ref <enhance_model>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        enhance_model: !ref <enhance_model>
    paths:
        enhance_model: speechbrain/metricgan-plus-voicebank/enhance_model.ckpt
"""

GENERATOR_PARAMS = 1_895_514
"""Parameters of the published generator (2-layer BLSTM 257->200x2, linear 400->300->257, sigmoid slopes)."""

ABSENT_HUB_ID = "audio-orchestrator-tests/no-such-metricgan"

# Batched vs single: measured max difference 3e-7 (float rounding); the tolerance allows only that.
BATCH_ATOL = 1e-5

# 10 s of 16 kHz mono: median 0.04-0.05 s here (RTF ~0.005, single runs up to 0.012); 10 s of 48 kHz stereo:
# 0.09-0.17 s. The bound is loose for a busy CI machine; it catches an order-of-magnitude regression.


def write_model(directory: Path, *, seed: int, hparams: str = PUBLISHED_HPARAMS) -> dict[str, np.ndarray]:
    """A MetricGAN+ model dir with random weights; returns the saved state_dict as numpy arrays."""
    import torch

    ensure_torchaudio()  # speechbrain imports torchaudio (see docs/guides/torchaudio-on-cpu.md)
    from speechbrain.lobes.models.MetricGAN import EnhancementGenerator

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hyperparams.yaml").write_text(hparams, encoding="utf-8")
    torch.manual_seed(seed)
    generator = EnhancementGenerator(input_size=257, hidden_size=200, num_layers=2, dropout=0)
    state = generator.state_dict()
    assert sum(t.numel() for t in state.values()) == GENERATOR_PARAMS
    torch.save(state, directory / "enhance_model.ckpt")
    return {k: v.numpy().copy() for k, v in state.items()}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    directory = tmp_path_factory.mktemp("metricgan-plus-random")
    return directory, write_model(directory, seed=1234)


@pytest.fixture(scope="module")
def engine(model, tmp_path_factory: pytest.TempPathFactory) -> MetricGanEngine:
    eng = MetricGanEngine(str(model[0]), savedir=tmp_path_factory.mktemp("savedir"), batch_size=4)
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.aclose())


@pytest.fixture(scope="module")
def single(model, tmp_path_factory: pytest.TempPathFactory) -> MetricGanEngine:
    """Same model, one signal per enhance_batch call."""
    eng = MetricGanEngine(str(model[0]), savedir=tmp_path_factory.mktemp("savedir1"), batch_size=1)
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.aclose())


def speechlike(frames: int, rate: int, seed: int) -> np.ndarray:
    """A modulated harmonic tone plus white noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / rate
    voiced = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    voiced += 0.1 * np.sin(2 * np.pi * 540 * t)
    return (voiced + 0.05 * rng.standard_normal(frames)).astype(np.float32)


def check_same_shape(out: AudioSegment, audio: AudioSegment) -> None:
    assert out.sample_rate == audio.sample_rate
    assert out.channels == audio.channels
    assert out.frames == audio.frames
    assert np.isfinite(out.samples).all()


# --- loading ---------------------------------------------------------------------------------------


def test_loads_the_checkpoint_through_from_hparams(engine: MetricGanEngine, model) -> None:
    directory, saved = model
    assert isinstance(engine, Denoiser)
    assert engine.ready()
    assert engine.describe() == {
        "engine": "metricgan", "model": str(directory), "native_rate_hz": 16000, "device": "cpu",
    }
    assert engine.torchaudio in ("torchaudio", "stand-in")
    # speechbrain collected both files into the savedir as links to the local dir (not to the hub path
    # the YAML names), and the generator holds the checkpoint's tensors, not a fresh random init.
    for name in MODEL_FILES:
        link = engine.savedir / name
        assert link.resolve() == (directory / name).resolve()
    loaded = engine._enhancer.mods.enhance_model.state_dict()
    assert set(loaded) == set(saved)
    for key, value in saved.items():
        np.testing.assert_array_equal(loaded[key].numpy(), value, err_msg=key)


def test_local_dir_without_pretrainer_paths_is_its_own_savedir(tmp_path: Path) -> None:
    # A recipe whose pretrainer names no path: speechbrain takes enhance_model.ckpt from the source dir.
    hparams = PUBLISHED_HPARAMS[: PUBLISHED_HPARAMS.index("    paths:")]
    write_model(tmp_path / "model", seed=7, hparams=hparams)
    before = sorted(p.name for p in (tmp_path / "model").iterdir())
    eng = MetricGanEngine(str(tmp_path / "model"))
    asyncio.run(eng.start())
    assert eng.savedir == tmp_path / "model"
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == before  # nothing written there
    out = eng.denoise(AudioSegment(speechlike(8000, 16000, seed=3), 16000))
    assert out.frames == 8000 and np.isfinite(out.samples).all()


def test_not_ready_before_start(model) -> None:
    eng = MetricGanEngine(str(model[0]))
    assert not eng.ready()
    with pytest.raises(EngineNotReadyError):
        eng.denoise(AudioSegment(np.zeros(160, np.float32), 16000))


def test_bad_models_fail_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(EngineFailedError, match="not a model"):
        asyncio.run(MetricGanEngine("not a model id").start())
    with pytest.raises(EngineFailedError, match="does not exist"):
        asyncio.run(MetricGanEngine(str(tmp_path / "missing")).start())
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "hyperparams.yaml").write_text(PUBLISHED_HPARAMS, encoding="utf-8")
    with pytest.raises(EngineFailedError, match="enhance_model.ckpt"):
        asyncio.run(MetricGanEngine(str(tmp_path / "half")).start())


# --- weights without network -----------------------------------------------------------------------


def test_weights_available(model, tmp_path: Path) -> None:
    directory, _ = model
    assert metricgan_weights_available(str(directory), None)
    assert metricgan_weights_available(str(directory), tmp_path / "anywhere")
    assert not metricgan_weights_available(ABSENT_HUB_ID, tmp_path / "empty")
    assert not metricgan_weights_available(ABSENT_HUB_ID, None)
    assert not metricgan_weights_available(str(tmp_path / "missing"), None)
    assert not metricgan_weights_available("not a model id", None)
    (tmp_path / "half").mkdir()
    shutil.copy(directory / "hyperparams.yaml", tmp_path / "half")
    assert not metricgan_weights_available(str(tmp_path / "half"), None)
    # A hub id whose files speechbrain already collected into the savedir counts as present.
    saved = tmp_path / "collected"
    saved.mkdir()
    for name in MODEL_FILES:
        (saved / name).symlink_to(directory / name)
    assert metricgan_weights_available(ABSENT_HUB_ID, saved)
    (saved / "enhance_model.ckpt").unlink()
    (saved / "enhance_model.ckpt").symlink_to(tmp_path / "gone.ckpt")  # a dangling link is not a file
    assert not metricgan_weights_available(ABSENT_HUB_ID, saved)


def test_hub_id_in_the_hf_cache_loads_without_network(
    model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The published model as a finished huggingface_hub download (cache layout: refs/main names the
    # snapshot). The engine fetches with allow_network=False, so nothing may touch the network.
    from huggingface_hub import constants

    directory, saved = model
    repo = "speechbrain/metricgan-plus-voicebank"
    snapshot = tmp_path / "hub" / "models--speechbrain--metricgan-plus-voicebank" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy(directory / name, snapshot / name)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # were anything fetched, it would fail
    savedir = tmp_path / "savedir"
    assert metricgan_weights_available(repo, savedir)
    eng = MetricGanEngine(repo, savedir=savedir)
    asyncio.run(eng.start())
    for name in MODEL_FILES:
        assert (savedir / name).resolve() == (snapshot / name).resolve()
    loaded = eng._enhancer.mods.enhance_model.state_dict()
    np.testing.assert_array_equal(loaded["linear2.weight"].numpy(), saved["linear2.weight"])
    assert metricgan_weights_available(repo, savedir)  # now collected in the savedir too


def test_uncached_hub_id_fails_fast_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = time.perf_counter()
    with pytest.raises(EngineFailedError, match="not in .* and downloads are off") as err:
        asyncio.run(MetricGanEngine(ABSENT_HUB_ID, savedir=tmp_path / "s1", allow_download=False).start())
    assert ABSENT_HUB_ID in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EngineFailedError, match="HF_HUB_OFFLINE is set"):
        asyncio.run(MetricGanEngine(ABSENT_HUB_ID, savedir=tmp_path / "s2").start())
    assert time.perf_counter() - t0 < 5.0
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()


def test_unreachable_hub_fails_fast_instead_of_retrying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub retries an unreachable hub for ~25 s; the engine probes it first. The "hub" here is
    # a closed port on the loopback interface (no traffic leaves the machine).
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    with pytest.raises(EngineFailedError, match=f"cannot reach http://127.0.0.1:{port}"):
        asyncio.run(MetricGanEngine(ABSENT_HUB_ID, savedir=tmp_path / "s").start())
    assert time.perf_counter() - t0 < 5.0


# --- denoising -------------------------------------------------------------------------------------


def test_denoise_16k_mono(engine: MetricGanEngine) -> None:
    audio = AudioSegment(speechlike(3 * 16000 + 123, 16000, seed=1), 16000)
    out = engine.denoise(audio)
    check_same_shape(out, audio)
    # The random generator's mask really changes the signal (measured: mean |diff| 0.11 for mean |x| 0.13).
    assert np.abs(out.samples - audio.samples).mean() > 0.1 * np.abs(audio.samples).mean()


def test_denoise_48k_stereo_channel_by_channel(engine: MetricGanEngine) -> None:
    frames = 2 * 48000 + 77
    stereo = np.stack([speechlike(frames, 48000, seed=2), 0.5 * speechlike(frames, 48000, seed=3)], axis=1)
    audio = AudioSegment(stereo, 48000)
    out = engine.denoise(audio)
    check_same_shape(out, audio)
    assert np.abs(out.samples - audio.samples).mean() > 0.1 * np.abs(audio.samples).mean()
    # Channels are independent signals: each equals denoising that channel alone.
    for c in range(2):
        alone = engine.denoise(AudioSegment(stereo[:, c], 48000))
        np.testing.assert_allclose(out.samples[:, c], alone.samples[:, 0], atol=BATCH_ATOL)


def test_denoise_batch_equals_each_clip_alone(engine: MetricGanEngine, single: MetricGanEngine) -> None:
    clips = [
        AudioSegment(speechlike(16000, 16000, seed=10), 16000),
        AudioSegment(speechlike(9601, 16000, seed=11), 16000),  # not a whole number of 256-sample hops
        AudioSegment(speechlike(700, 16000, seed=12), 16000),  # shorter than one STFT window
        AudioSegment(np.stack([speechlike(30000, 44100, 13), speechlike(30000, 44100, 14)], axis=1), 44100),
        AudioSegment(speechlike(12345, 16000, seed=15), 16000),
    ]
    batched = engine.denoise_batch(clips)  # 6 signals: a batch of 4 then a batch of 2, padded to their longest
    assert len(batched) == len(clips)
    for clip, out in zip(clips, batched, strict=True):
        check_same_shape(out, clip)
        np.testing.assert_allclose(out.samples, single.denoise(clip).samples, atol=BATCH_ATOL)


def test_batch_lengths_survive_float32_truncation(engine: MetricGanEngine, single: MetricGanEngine) -> None:
    # 5200 and 3000 samples: 22 and 13 STFT frames. speechbrain packs floor(lengths * 22) frames, and
    # float32(13 / 22) * 22 = 12.99999 floors to 12: the engine's half-frame margin keeps the 13th.
    clips = [AudioSegment(speechlike(n, 16000, seed=n), 16000) for n in (5200, 3000)]
    for clip, out in zip(clips, engine.denoise_batch(clips), strict=True):
        np.testing.assert_allclose(out.samples, single.denoise(clip).samples, atol=BATCH_ATOL)


def test_padding_would_matter_without_frame_exact_lengths(engine: MetricGanEngine) -> None:
    # Why the engine pads to whole hops and gives lengths in frames: with the usual relative lengths in
    # samples, speechbrain's BLSTM runs one frame short on the padded clip and the difference flows back
    # through the backward LSTM (measured: up to 0.09, from ~180 ms before the clip's end).
    import torch

    long, short = speechlike(16000, 16000, seed=20), speechlike(9601, 16000, seed=21)
    batch = np.zeros((2, 16000), np.float32)
    batch[0], batch[1, :9601] = long, short
    with torch.inference_mode():
        naive = engine._enhancer.enhance_batch(torch.from_numpy(batch), lengths=torch.tensor([1.0, 9601 / 16000]))
    exact = engine.denoise(AudioSegment(short, 16000)).samples[:, 0]
    assert np.abs(naive[1, :9601].numpy() - exact).max() > 100 * BATCH_ATOL


def test_edge_inputs(engine: MetricGanEngine) -> None:
    empty = AudioSegment(np.zeros((0, 2), np.float32), 16000)
    out = engine.denoise(empty)
    assert out.frames == 0 and out.channels == 2
    one = AudioSegment(np.full((1, 1), 0.1, np.float32), 48000)  # no sample at all once at 16 kHz
    check_same_shape(engine.denoise(one), one)
    silence = AudioSegment(np.zeros(4000, np.float32), 8000)
    out = engine.denoise(silence)
    check_same_shape(out, silence)
    assert np.abs(out.samples).max() < 1e-6  # silence stays silence (measured 1e-9: the magnitude's epsilon)
    bad = np.zeros(1600, np.float32)
    bad[5] = np.nan
    with pytest.raises(InvalidAudioError):
        engine.denoise(AudioSegment(bad, 16000))


def test_no_streaming(engine: MetricGanEngine) -> None:
    assert engine.streaming is False
    assert engine.native_rate_hz == NATIVE_RATE_HZ == 16000
    with pytest.raises(NotImplementedError, match="deepfilternet"):
        engine.open_stream(16000)


def test_engine_choice_follows_the_settings(model, tmp_path: Path) -> None:
    """Default: the evaluated DeepFilterNet3 (12 dB limit); ``auto`` takes MetricGAN+ only when its weights
    are present; ``metricgan`` takes it regardless (and is then not ready until loaded); streaming stays on
    DeepFilterNet3 either way."""
    from services.audio_preprocessor.deepfilternet import DeepFilterNetEngine
    from services.audio_preprocessor.engine import build_denoisers
    from services.audio_preprocessor.settings import Settings

    def kinds(**kwargs) -> tuple[str, str]:
        batch, stream = build_denoisers(Settings(_env_file=None, **kwargs))
        assert isinstance(stream, DeepFilterNetEngine)
        return type(batch).__name__, type(stream).__name__

    default = Settings(_env_file=None)
    assert (default.denoise_engine, default.deepfilternet_atten_lim_db) == ("deepfilternet", 12.0)
    assert kinds() == ("DeepFilterNetEngine", "DeepFilterNetEngine")
    assert build_denoisers(default)[0].describe()["atten_lim_db"] == 12.0
    present = {"metricgan_model_path": str(model[0]), "metricgan_savedir": tmp_path / "s"}
    assert kinds(denoise_engine="auto", **present) == ("MetricGanEngine", "DeepFilterNetEngine")
    assert kinds(denoise_engine="auto", metricgan_model_path=ABSENT_HUB_ID,
                 metricgan_savedir=tmp_path / "none") == ("DeepFilterNetEngine", "DeepFilterNetEngine")
    assert kinds(denoise_engine="metricgan", metricgan_model_path=ABSENT_HUB_ID,
                 metricgan_savedir=tmp_path / "none") == ("MetricGanEngine", "DeepFilterNetEngine")
