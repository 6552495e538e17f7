"""Settings of the llm-flan service. The only code of the service that reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings, service_env_files

MODEL_SIZES = {
    "BASE": "google/flan-t5-base",
    "LARGE": "google/flan-t5-large",
    "XL": "google/flan-t5-xl",
}


class Settings(BaseServiceSettings):
    """Environment of the llm-flan service: the fleet-wide settings plus the ``FLAN_T5_*`` ones."""

    model_config = SettingsConfigDict(env_file=service_env_files(__file__))

    service_name: ClassVar[str] = "llm-flan"

    port: int = Field(8110, ge=1, le=65535)
    """Port to listen on; 8110 is the compose host port of ``llm-flan`` (8100 inside the container)."""

    max_queue: int = Field(32, ge=0, le=10_000)
    """Generation rows (a request with ``n`` choices counts ``n``) that may wait for the model; one more is
    refused with 503 ``busy`` and ``Retry-After``."""

    flan_t5_model_size: str = Field("BASE", min_length=1,
                                    validation_alias=AliasChoices("FLAN_T5_MODEL_SIZE", "FLAN_T5_MODEL"))
    """The model: ``BASE``, ``LARGE`` or ``XL`` (google/flan-t5-base/-large/-xl), or any seq2seq hub id
    (owner/name) or local directory with config.json and tokenizer files. Also read as ``FLAN_T5_MODEL`` (the
    plan's ``.env.enhanced`` name, e.g. ``google/flan-t5-large``); ``FLAN_T5_MODEL_SIZE`` wins when both are set."""

    flan_t5_backend: Literal["transformers", "ctranslate2"] = "transformers"
    """``transformers`` (PyTorch; fp16 on CUDA) or ``ctranslate2`` (int8 by default; the model is converted on
    first load into ``FLAN_T5_CT2_DIR``, or ahead of time with ``make models``)."""

    flan_t5_device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs: ``auto`` = CUDA when a GPU is visible, else CPU."""

    flan_t5_ct2_dir: Path | None = None
    """Directory of the CTranslate2 conversion (model.bin + tokenizer). Empty: ``~/.cache/audio-orchestrator/
    ct2/<model>-<compute type>``. Converted there on first load when missing."""

    flan_t5_ct2_compute_type: Literal["auto", "int8", "int8_float16", "int8_float32", "float16", "float32"] = "auto"
    """CTranslate2 weights/compute type; ``auto`` = int8 on CPU, int8_float16 on CUDA."""

    flan_t5_cpu_threads: int = Field(0, ge=0, le=256)
    """CPU threads per generate call; 0 = the library's default (all cores)."""

    flan_t5_allow_download: bool = True
    """Download a hub model missing from the Hugging Face cache at start (with progress on stderr); false =
    files on disk only. Offline, a missing model keeps the service not-ready with the reason."""

    flan_t5_max_length: int = Field(512, ge=1, le=4096)
    """Most tokens one answer may generate: the default of a request without ``max_tokens`` and its upper
    limit (a larger ``max_tokens`` is refused with 422, never cut)."""

    flan_t5_max_input_tokens: int = Field(512, ge=16, le=4096)
    """Encoder budget of one prompt in tokens (FLAN-T5 was trained on 512). Older turns of a long history are
    left out, oldest first, to fit; the newest message is always kept (too long alone: 422)."""

    flan_t5_temperature: float = Field(0.7, ge=0.0, le=2.0)
    """Sampling temperature of requests that give none; 0 = greedy."""

    flan_t5_top_p: float = Field(0.9, gt=0.0, le=1.0)
    """Nucleus sampling mass of requests that give none."""

    flan_t5_batch_window_ms: float = Field(10.0, ge=0.0, le=1000.0)
    """Dynamic batching: after a request arrives, wait this long for others to share its generate call."""

    flan_t5_max_batch_size: int = Field(8, ge=1, le=256)
    """Most rows (requests x choices) in one generate call; 1 turns batching off."""

    def model_id(self) -> str:
        """``FLAN_T5_MODEL_SIZE`` resolved: a size name becomes its google/flan-t5-* hub id."""
        return MODEL_SIZES.get(self.flan_t5_model_size.strip().upper(), self.flan_t5_model_size.strip())
