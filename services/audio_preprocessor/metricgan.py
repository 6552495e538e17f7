"""MetricGAN+ denoiser through speechbrain's ``SpectralMaskEnhancement`` (batch only, 16 kHz).

`MetricGanEngine` implements `services.audio_preprocessor.engine.Denoiser` for ``denoise`` (any rate and
channel count) and ``denoise_batch`` (several clips in one model call); it does not stream (a bidirectional
LSTM needs the whole clip): ``open_stream`` raises NotImplementedError, DeepFilterNet3 streams.

``METRICGAN_MODEL_PATH`` is a Hugging Face hub id (``speechbrain/metricgan-plus-voicebank``) or a local dir
holding ``hyperparams.yaml`` and ``enhance_model.ckpt``. Either is loaded by the one call users of
speechbrain make, ``SpectralMaskEnhancement.from_hparams(source=model, savedir=savedir, run_opts=...)``.

speechbrain 1.1 facts this module relies on:

- ``import speechbrain`` imports ``torchaudio`` (``speechbrain.utils.torch_audio_backend``, reached from
  ``speechbrain.core``) and reads only ``torchaudio.__version__`` and, when present,
  ``torchaudio.list_audio_backends``. Nothing on the MetricGAN+ path (STFT/ISTFT, the generator, fetching,
  checkpoint loading) calls torchaudio. PyPI's torchaudio is a CUDA build that cannot load on the CPU torch
  this project pins, so speechbrain is installed without it and `ensure_torchaudio` puts a stand-in
  module in its place when the real one is missing or does not import: docs/guides/torchaudio-on-cpu.md.
- ``from_hparams`` fetches ``hyperparams.yaml`` from ``source`` into ``savedir``, builds every object in
  it, then its ``pretrainer`` fetches ``enhance_model.ckpt``: from ``pretrainer.paths`` when the YAML names
  a path (the published YAML names ``speechbrain/metricgan-plus-voicebank/enhance_model.ckpt``, a hub path,
  even when the YAML itself was read from a local dir), else from ``source``. A file already present in
  ``savedir`` is used without any fetch. For a local dir we therefore point ``pretrainer.paths`` at the
  dir's own checkpoint (an ``overrides`` entry), and by default use the dir itself as ``savedir``.
- ``FetchConfig(allow_network=False)`` turns hub fetches into ``local_files_only`` cache look-ups.
  Without it, huggingface_hub 2.x retries an unreachable hub for about 25 s before it gives up.
- ``enhance_batch(noisy[B, T], lengths[B])``: log1p spectral magnitude (STFT 512 points, 32 ms window,
  16 ms hop, centred with *zero* padding), a 2-layer BLSTM generator whose input is packed to
  ``floor(lengths * frames)`` frames (``speechbrain.nnet.RNN.pack_padded_sequence``: a truncation, so a
  relative length of ``k / frames`` computed in float32 can give ``k - 1``), a mask times the noisy
  magnitude, and the noisy phase back through the ISTFT to ``T`` samples.

Batching is exact: every clip is zero-padded to a whole number of hops (the STFT pads the end with zeros
anyway) and to the longest clip of its batch, and its relative length is given in frames, half a frame
over its last one so that the truncation lands on it. A clip then sees the same STFT frames, the same
packed BLSTM steps and the same ISTFT overlap-add on its own samples whatever it is batched with; the
test measures the difference between batched and single (float rounding only).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import math
import os
import re
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.common.audio import AudioSegment
from services.common.errors import EngineFailedError, EngineNotReadyError, InvalidAudioError
from services.common.hub import hub_offline, hub_unreachable, is_local_path
from services.common.inference import load_in_thread

if TYPE_CHECKING:
    from speechbrain.inference.enhancement import SpectralMaskEnhancement

log = logging.getLogger(__name__)

NATIVE_RATE_HZ = 16_000
"""MetricGAN+'s rate (VoiceBank-DEMAND); checked against the loaded ``compute_stft.sample_rate``."""

DEFAULT_MODEL = "speechbrain/metricgan-plus-voicebank"

MODEL_FILES = ("hyperparams.yaml", "enhance_model.ckpt")
"""A MetricGAN+ model as speechbrain publishes it: the HyperPyYAML recipe and the generator's state_dict."""

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

TORCHAUDIO_STAND_IN_VERSION = "2.9.0+absent"
"""``__version__`` of the stand-in: speechbrain skips its audio-backend check for torchaudio >= 2.9 (which
dropped ``list_audio_backends``); an unparsable or older version only makes it log a warning."""


# --- torchaudio ------------------------------------------------------------------------------------


def ensure_torchaudio() -> str:
    """Make ``import torchaudio`` succeed for speechbrain; returns ``"torchaudio"`` or ``"stand-in"``.

    The real torchaudio is used when it imports. When it is not installed, or is installed but does not
    import (PyPI's CUDA build next to CPU torch: ``OSError: libc10_cuda.so``), a stand-in module named
    ``torchaudio`` goes into ``sys.modules``: it has ``__version__`` and nothing else, and any other
    attribute raises AttributeError naming the guide. It stays for the life of the process (speechbrain's
    modules keep a reference to it and import more of themselves lazily).
    """
    current = sys.modules.get("torchaudio")
    if current is not None:
        return "stand-in" if getattr(current, "__audio_orchestrator_stand_in__", False) else "torchaudio"
    reason = "not installed"
    if importlib.util.find_spec("torchaudio") is not None:
        try:
            import torchaudio  # noqa: F401

            return "torchaudio"
        except Exception as exc:  # OSError (CUDA build on CPU torch), ImportError, RuntimeError (ABI)
            reason = f"installed but does not import ({type(exc).__name__}: {exc})"
            for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
                del sys.modules[name]
    sys.modules["torchaudio"] = _torchaudio_stand_in(reason)
    log.log(
        logging.INFO if reason == "not installed" else logging.WARNING,
        "torchaudio %s: speechbrain runs with a stand-in module (docs/guides/torchaudio-on-cpu.md)", reason,
    )
    return "stand-in"


def _torchaudio_stand_in(reason: str) -> types.ModuleType:
    doc = f"Stand-in for torchaudio ({reason}); see docs/guides/torchaudio-on-cpu.md."
    module = types.ModuleType("torchaudio", doc)
    module.__version__ = TORCHAUDIO_STAND_IN_VERSION  # type: ignore[attr-defined]
    module.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None, origin=__name__)
    module.__audio_orchestrator_stand_in__ = True  # type: ignore[attr-defined]

    def __getattr__(name: str) -> Any:
        raise AttributeError(
            f"torchaudio.{name} is not available: torchaudio is {reason} and this process uses a stand-in "
            "that only lets speechbrain import (docs/guides/torchaudio-on-cpu.md)"
        )

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return module


def speechbrain_installed() -> bool:
    """Whether speechbrain is installed (not imported: that takes seconds)."""
    return importlib.util.find_spec("speechbrain") is not None


def _spectral_mask_enhancement() -> type[SpectralMaskEnhancement]:
    ensure_torchaudio()
    try:
        from speechbrain.inference.enhancement import SpectralMaskEnhancement
    except ImportError as exc:
        raise EngineFailedError(
            f"metricgan needs speechbrain ({exc}): make install (lock/all.txt carries speechbrain without torchaudio), "
            "plus the project's denoise extra for its other dependencies (docs/guides/torchaudio-on-cpu.md)"
        ) from exc
    return SpectralMaskEnhancement


# --- model resolution ------------------------------------------------------------------------------


def default_savedir(model: str) -> Path:
    """Where a hub model's files are collected: ``$XDG_CACHE_HOME`` (or ~/.cache)
    ``/audio-orchestrator/metricgan/<owner>--<name>``; a local dir is its own savedir."""
    if is_local_path(model):
        return Path(model).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "audio-orchestrator" / "metricgan" / model.replace("/", "--")


def _has_model_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in MODEL_FILES)  # is_file follows (and rejects broken) symlinks


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return all(isinstance(try_to_load_from_cache(repo_id, name), str) for name in MODEL_FILES)
    except Exception:  # invalid repo id for the hub's validator, unreadable cache
        return False


def metricgan_weights_available(model: str, savedir: Path | str | None = None) -> bool:
    """Whether `MetricGanEngine.start` finds ``model`` without network: a local dir with ``hyperparams.yaml``
    and ``enhance_model.ckpt``, or a hub id whose two files are in ``savedir`` (default `default_savedir`)
    or in the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``). Never raises, never downloads."""
    try:
        if is_local_path(model):
            return _has_model_files(Path(model).expanduser())
        if not _HUB_ID.match(model):
            return False
        target = Path(savedir).expanduser() if savedir else default_savedir(model)
        return _has_model_files(target) or _in_hf_cache(model)
    except OSError:
        return False


# --- engine ----------------------------------------------------------------------------------------


class MetricGanEngine:
    """`Denoiser` on speechbrain's MetricGAN+ (``SpectralMaskEnhancement``), 16 kHz, batch only.

    ``model``: hub id or local dir. ``savedir``: where speechbrain collects the model's files (symlinks);
    default `default_savedir`. ``batch_size``: mono signals (channels, clips) per ``enhance_batch`` call.
    ``device``: torch device (``cpu``, ``cuda``). ``threads``: torch intra-op threads for the process
    (``torch.set_num_threads``; None leaves torch's default, one per core). ``allow_download``: fetch a
    hub id missing from the caches; False (or ``HF_HUB_OFFLINE=1``) makes such a start fail at once.
    """

    name = "metricgan"
    native_rate_hz = NATIVE_RATE_HZ
    streaming = False

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        savedir: Path | str | None = None,
        batch_size: int = 1,
        device: str = "cpu",
        threads: int | None = None,
        allow_download: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        self.model = str(model)
        self.savedir = Path(savedir).expanduser() if savedir else default_savedir(self.model)
        self.batch_size = batch_size
        self.device = device
        self.threads = threads
        self.allow_download = allow_download
        self.torchaudio: str | None = None
        """``torchaudio`` or ``stand-in`` once started."""
        self._enhancer: SpectralMaskEnhancement | None = None
        self._hop = 256
        self._closed = False

    # -- lifecycle

    def _load(self) -> SpectralMaskEnhancement:
        t0 = time.perf_counter()
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        self.torchaudio = ensure_torchaudio()
        what = f"METRICGAN_MODEL_PATH={self.model!r}"
        overrides: dict[str, Any] = {}
        if is_local_path(self.model):
            source = Path(self.model).expanduser()
            if not source.is_dir():
                raise EngineFailedError(f"{what}: directory {source} does not exist")
            if not _has_model_files(source):
                raise EngineFailedError(
                    f"{what}: {source} is not a MetricGAN+ model dir (needs {' and '.join(MODEL_FILES)})"
                )
            # The published YAML names the checkpoint by hub path: load this dir's own instead.
            overrides = {"pretrainer": {"paths": {"enhance_model": str((source / MODEL_FILES[1]).resolve())}}}
            network = False
        elif _HUB_ID.match(self.model):
            source = self.model
            network = not metricgan_weights_available(self.model, self.savedir)
            if network:
                where = f"{self.savedir} or the Hugging Face cache"
                if not self.allow_download or hub_offline():
                    why = "downloads are off" if not self.allow_download else "HF_HUB_OFFLINE is set"
                    raise EngineFailedError(
                        f"{what} is not in {where} and {why}: put the model there, or set a local dir "
                        f"with {' and '.join(MODEL_FILES)}"
                    )
                unreachable = hub_unreachable()
                if unreachable:
                    raise EngineFailedError(f"{what} is not in {where} and {unreachable}")
        else:
            raise EngineFailedError(
                f"{what} is not a model: accepted are a Hugging Face hub id (owner/name) or a local dir "
                f"(absolute, ./, ../ or ~) with {' and '.join(MODEL_FILES)}"
            )
        enhancement = _spectral_mask_enhancement()
        from speechbrain.utils.fetching import FetchConfig

        try:
            self.savedir.mkdir(parents=True, exist_ok=True)
            enhancer = enhancement.from_hparams(
                source=str(source),
                savedir=str(self.savedir),
                run_opts={"device": self.device},
                overrides=overrides,
                fetch_config=FetchConfig(allow_network=network),
            )
        except Exception as exc:
            raise EngineFailedError(
                f"could not load {what} (savedir {self.savedir}): {type(exc).__name__}: {exc}"
            ) from exc
        stft = enhancer.hparams.compute_stft
        if int(stft.sample_rate) != NATIVE_RATE_HZ:
            raise EngineFailedError(f"{what} works at {stft.sample_rate} Hz, this engine at {NATIVE_RATE_HZ} Hz")
        self._hop = int(stft.hop_length)  # in samples (speechbrain converts the YAML's milliseconds)
        enhancer.eval()
        log.info(
            "loaded MetricGAN+ %s on %s in %.2f s (savedir %s, torch threads %s, torchaudio: %s)", self.model,
            self.device, time.perf_counter() - t0, self.savedir, self.threads or "default", self.torchaudio,
            extra={"engine": self.name},
        )
        return enhancer

    async def start(self) -> None:
        self._closed = False
        enhancer = await load_in_thread(self._load)
        if not self._closed:
            self._enhancer = enhancer

    def ready(self) -> bool:
        return self._enhancer is not None and not self._closed

    async def aclose(self) -> None:
        self._closed = True
        self._enhancer = None  # running calls keep their own reference until they finish

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model, "native_rate_hz": self.native_rate_hz, "device": self.device}

    def open_stream(self, sample_rate_hz: int) -> Any:
        raise NotImplementedError(
            "metricgan does not stream (its bidirectional LSTM needs the whole clip): use the deepfilternet "
            "engine for streaming (/denoise/streaming always does)"
        )

    # -- denoising

    def denoise(self, audio: AudioSegment) -> AudioSegment:
        """Enhanced audio at the input's rate, channels and length (MetricGAN+ has no delay to remove)."""
        return self.denoise_batch([audio])[0]

    def denoise_batch(self, clips: Sequence[AudioSegment]) -> list[AudioSegment]:
        """Each clip enhanced (any rates, channel counts and lengths), in order: every channel of every clip
        is one mono signal, and signals go through ``enhance_batch`` ``batch_size`` at a time, longest
        first. A clip's result does not depend on what it was batched with (module doc)."""
        enhancer = self._enhancer
        if enhancer is None or self._closed:
            raise EngineNotReadyError(f"{self.name} has not loaded {self.model} yet; retry shortly", retry_after_s=2)
        signals: list[np.ndarray] = []
        for clip in clips:
            if not np.isfinite(clip.samples).all():
                raise InvalidAudioError("audio contains NaN or infinite samples: accepted are finite samples")
            native = clip.resample(NATIVE_RATE_HZ) if clip.frames else clip
            signals.extend(np.ascontiguousarray(native.samples[:, c]) for c in range(clip.channels))
        try:
            enhanced = self._enhance(enhancer, signals)
        except EngineFailedError:
            raise
        except Exception as exc:
            raise EngineFailedError(
                f"{self.name} failed on {len(signals)} signal(s): {type(exc).__name__}: {exc}"
            ) from exc
        results: list[AudioSegment] = []
        at = 0
        for clip in clips:
            channels = enhanced[at : at + clip.channels]
            at += clip.channels
            if len(channels[0]) == 0:  # no sample at 16 kHz (an empty clip, or a few at a higher rate)
                results.append(AudioSegment(clip.samples.copy(), clip.sample_rate))
                continue
            out = AudioSegment(np.stack(channels, axis=1), NATIVE_RATE_HZ).resample(clip.sample_rate).samples
            results.append(AudioSegment(_fit(out, clip.frames), clip.sample_rate))
        return results

    def _enhance(self, enhancer: SpectralMaskEnhancement, signals: list[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(signals)
        order = sorted((i for i in range(len(signals)) if len(signals[i])), key=lambda i: -len(signals[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, y in zip(chunk, self._enhance_chunk(enhancer, [signals[i] for i in chunk]), strict=True):
                out[i] = y
        return out

    def _enhance_chunk(self, enhancer: SpectralMaskEnhancement, signals: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        hop = self._hop
        lengths = [len(s) for s in signals]
        padded = max(math.ceil(n / hop) for n in lengths) * hop
        total_frames = padded // hop + 1  # centred STFT
        batch = np.zeros((len(signals), padded), np.float32)
        for row, s in zip(batch, signals, strict=True):
            row[: len(s)] = s
        # Frames of each clip padded to whole hops, as a fraction of the batch's; +0.5 frame so that
        # speechbrain's floor(lengths * frames) gives the clip's exact frame count (module doc).
        relative = [
            1.0 if frames == total_frames else (frames + 0.5) / total_frames
            for frames in (math.ceil(n / hop) + 1 for n in lengths)
        ]
        with torch.inference_mode():
            y = enhancer.enhance_batch(torch.from_numpy(batch), lengths=torch.tensor(relative, dtype=torch.float32))
        y = y.detach().to("cpu", torch.float32).numpy()
        if y.shape != batch.shape or not np.isfinite(y).all():
            raise EngineFailedError(
                f"{self.name} returned {'non-finite samples' if y.shape == batch.shape else f'shape {y.shape}'} "
                f"for a batch of shape {batch.shape}"
            )
        return [np.ascontiguousarray(y[i, :n]) for i, n in enumerate(lengths)]


def _fit(samples: np.ndarray, frames: int) -> np.ndarray:
    """Trim or zero-pad (frames, channels) at the end to exactly ``frames`` (resampling may be off by one)."""
    if samples.shape[0] >= frames:
        return samples[:frames]
    return np.pad(samples, ((0, frames - samples.shape[0]), (0, 0)))
