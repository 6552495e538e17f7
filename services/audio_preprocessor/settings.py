"""Settings of the audio-preprocessor service. The only code of the service that reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings, service_env_files


class Settings(BaseServiceSettings):
    """Environment of audio-preprocessor: the fleet-wide settings plus denoising ones."""

    model_config = SettingsConfigDict(env_file=service_env_files(__file__))

    service_name: ClassVar[str] = "audio-preprocessor"

    port: int = Field(9210, ge=1, le=65535)
    """Port to listen on; 9210 is the compose host port of ``audio-preprocessor`` (container port 9200)."""

    denoise_engine: Literal["auto", "metricgan", "deepfilternet"] = "deepfilternet"
    """Engine of POST /denoise. ``deepfilternet`` (default): the DeepFilterNet3 model that ships with the
    service, the engine scripts/eval_denoise.py measured. ``auto``: MetricGAN+ when its weights are present
    (a local dir, or the hub id already in the cache), else DeepFilterNet3. /denoise/streaming always
    uses DeepFilterNet3 (MetricGAN+ is not a streaming model)."""

    metricgan_model_path: str = "speechbrain/metricgan-plus-voicebank"
    """MetricGAN+ model: a hub id or a local dir with ``hyperparams.yaml`` and ``enhance_model.ckpt``."""

    metricgan_savedir: Path | None = None
    """Directory speechbrain keeps this model's fetched files in. Empty: a hub id uses
    ``~/.cache/audio-orchestrator/metricgan/<owner>--<name>`` (``$XDG_CACHE_HOME`` respected) and a local dir
    is used in place."""

    metricgan_batch_size: int = Field(1, ge=1, le=64)
    """Channels or clips MetricGAN+ enhances in one batch."""

    deepfilternet_atten_lim_db: float = Field(12.0, ge=0.1, le=100.0)
    """Largest noise attenuation DeepFilterNet3 applies, in dB (100: no limit; lower keeps some background).
    12 is the measured best for transcription: unlimited suppression raised WER at 10 dB SNR."""

    deepfilternet_post_filter_beta: float = Field(0.0, ge=0.0, le=1.0)
    """DeepFilterNet3 post-filter strength (0: off). Higher suppresses more residual noise, with more artefacts."""

    denoise_skip_above_snr_db: float = Field(20.0, ge=0.0, le=200.0)
    """POST /denoise returns a recording unchanged when its estimated SNR (``snr.py``) is at least this many
    dB: denoising helps transcription only under heavy noise and costs ~0.3 s per second of audio. 20 keeps
    every clean utterance of the evaluation set (estimates 24-41 dB) and denoises 0 and 5 dB mixtures
    (6-17 dB); 200 denoises everything."""

    denoise_max_audio_s: float = Field(600.0, gt=0, le=14_400)
    """Longest audio POST /denoise accepts, in seconds (longer: 422)."""

    denoise_max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1024, le=2 * 1024**3)
    """Largest upload POST /denoise accepts, in bytes (larger: 413)."""

    stream_max_frame_s: float = Field(1.0, gt=0, le=10.0)
    """Longest single frame a /denoise/streaming client may send, in seconds of audio (longer: closed, 1009)."""
