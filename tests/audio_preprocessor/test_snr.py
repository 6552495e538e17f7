"""The SNR estimate that decides whether POST /denoise runs the engine: real speech, real noise."""

from __future__ import annotations

import numpy as np

from services.audio_preprocessor.snr import estimate_snr_db
from services.common.audio import decode_audio
from services.common.testing import audio_file

CLEAN = decode_audio(audio_file("clean/vbd_p232_011_clean.wav").read_bytes())


def mixed(snr_db: float, seed: int = 0) -> np.ndarray:
    speech = CLEAN.mono_1d().astype(np.float64)
    noise = np.random.default_rng(seed).standard_normal(len(speech))
    noise *= np.sqrt(np.mean(speech**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)))
    return speech + noise


def test_clean_speech_reads_high_and_noisy_speech_low():
    clean = estimate_snr_db(CLEAN.samples, CLEAN.sample_rate)
    assert clean is not None and clean > 25
    estimates = [estimate_snr_db(mixed(level), CLEAN.sample_rate) for level in (20, 10, 5, 0)]
    assert all(e is not None for e in estimates)
    assert estimates == sorted(estimates, reverse=True)  # more noise, lower estimate
    assert estimates[-1] < 12 < clean


def test_stereo_is_mixed_down_and_digital_silence_counts_as_a_quiet_floor():
    stereo = np.stack([CLEAN.mono_1d(), CLEAN.mono_1d()], axis=1)
    assert abs(estimate_snr_db(stereo, CLEAN.sample_rate) - estimate_snr_db(CLEAN.samples, CLEAN.sample_rate)) < 0.01
    padded = np.concatenate([np.zeros(16000), CLEAN.mono_1d(), np.zeros(16000)])
    assert estimate_snr_db(padded, 16000) > 60
    assert estimate_snr_db(np.zeros(16000), 16000) < 1  # silence: no speech above the floor


def test_too_short_to_tell_is_none():
    assert estimate_snr_db(CLEAN.mono_1d()[:4000], 16000) is None
