"""Estimated signal-to-noise ratio of one recording, to decide whether denoising it is worth it.

Denoising helps whisper only where noise is heavy (scripts/eval_denoise.py: with DeepFilterNet3 limited to
12 dB of attenuation, -10 WER points at 0 dB SNR, neutral at 10 dB and on clean speech) and costs ~0.9 s
of CPU per 3 s utterance on two cores. So POST /denoise skips recordings that are already clean
(``DENOISE_SKIP_ABOVE_SNR_DB``) and returns them unchanged.

The estimate needs no model: the recording's 20 ms frames' power, the noise floor taken as the 10th
percentile (speech leaves gaps: between words, before and after the utterance), the speech level as the
95th percentile; SNR = 10·log10((speech − noise) / noise). It reads low for stationary noise and for babble
(which fills the gaps), high for clean speech with a quiet floor. Recordings shorter than 0.5 s have no
estimate (None): they are denoised as before.
"""

from __future__ import annotations

import math

import numpy as np

FRAME_S = 0.02
MIN_DURATION_S = 0.5
FLOOR_POWER = 1e-10
"""Power of -100 dBFS: digital silence counts as a very quiet floor, not as zero."""


def estimate_snr_db(samples: np.ndarray, sample_rate: int) -> float | None:
    """Estimated SNR in dB of mono or (frames, channels) float audio in [-1, 1]; None when too short."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    frame = max(1, round(FRAME_S * sample_rate))
    n = len(x) // frame
    if n * frame < MIN_DURATION_S * sample_rate:
        return None
    power = np.maximum((x[: n * frame].reshape(n, frame) ** 2).mean(axis=1), FLOOR_POWER)
    noise = float(np.percentile(power, 10))
    speech = float(np.percentile(power, 95))
    return 10.0 * math.log10(max(speech - noise, FLOOR_POWER) / noise)
