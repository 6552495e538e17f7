"""The denoiser contract: one protocol for batch and streaming, implemented by every engine.

Engines work at their own rate (DeepFilterNet3 48 kHz, MetricGAN+ 16 kHz). ``denoise`` takes audio at any
rate and channel count (channels are denoised one by one) and returns audio at the *input's* rate, channel
count and length, with the engine's algorithmic delay removed, so the output lines up sample for sample
with the input. Resampling uses the common audio kit (soxr).

A ``DenoiseStream`` carries the engine's state across pushes, for a live call: push mono float32 samples
at the rate declared when the stream was opened, get back the enhanced samples that are ready (the first
pushes may return fewer samples than given: the engine's delay and frame buffering), and ``flush()`` at
the end for the rest. The concatenated output of a stream equals ``denoise`` of the whole input (within a
small tolerance) and has the same length.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from services.common.audio import AudioSegment


@runtime_checkable
class DenoiseStream(Protocol):
    sample_rate_hz: int
    """Rate of the samples pushed in and returned."""

    latency_s: float
    """Audio held back by the stream (engine delay + frame buffering + resampler delay), in seconds."""

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed mono float32 samples (any count); return the enhanced samples that are ready."""
        ...

    def flush(self) -> np.ndarray:
        """End of input: return every sample still held. The stream cannot be used afterwards."""
        ...


@runtime_checkable
class Denoiser(Protocol):
    name: str
    """Engine name for logs, metrics, headers and /health/ready (``deepfilternet``, ``metricgan``)."""

    native_rate_hz: int
    """Rate the model works at; other rates are resampled in and back out."""

    streaming: bool
    """Whether ``open_stream`` is supported."""

    async def start(self) -> None:
        """Load the model (in a thread that exits, see `services.common.inference.load_in_thread`)."""
        ...

    def ready(self) -> bool: ...

    async def aclose(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def denoise(self, audio: AudioSegment) -> AudioSegment:
        """Blocking: enhanced audio at the input's rate, channels and length (delay compensated)."""
        ...

    def open_stream(self, sample_rate_hz: int) -> DenoiseStream:
        """A stateful stream for mono audio at ``sample_rate_hz``; NotImplementedError if not ``streaming``."""
        ...


def build_denoisers(settings: Any) -> tuple[Denoiser, Denoiser]:
    """``(batch, stream)`` engines from settings. ``auto`` picks MetricGAN+ when its weights are present
    without network, else DeepFilterNet3; streaming is always DeepFilterNet3 (one instance shared when it
    also does batch)."""
    from services.audio_preprocessor.deepfilternet import DeepFilterNetEngine

    dfn = DeepFilterNetEngine(
        atten_lim_db=settings.deepfilternet_atten_lim_db, post_filter_beta=settings.deepfilternet_post_filter_beta
    )
    choice = settings.denoise_engine
    if choice == "auto":
        from services.audio_preprocessor.metricgan import metricgan_weights_available, speechbrain_installed

        present = speechbrain_installed() and metricgan_weights_available(
            settings.metricgan_model_path, settings.metricgan_savedir
        )
        choice = "metricgan" if present else "deepfilternet"
    if choice == "deepfilternet":
        return dfn, dfn
    from services.audio_preprocessor.metricgan import MetricGanEngine

    mgan = MetricGanEngine(settings.metricgan_model_path, savedir=settings.metricgan_savedir,
                           batch_size=settings.metricgan_batch_size)
    return mgan, dfn
