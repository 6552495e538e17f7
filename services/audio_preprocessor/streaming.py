"""PCM frame codec of the /denoise/streaming protocol (see app.py), shared with scripts/bench_denoise.py."""

from __future__ import annotations

import numpy as np

FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


class StreamClosed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def decode_frame(data: bytes, fmt: str) -> np.ndarray:
    """One binary WebSocket frame -> float32 samples in [-1, 1); StreamClosed(1007) when malformed."""
    dtype = FORMATS[fmt]
    if len(data) % dtype.itemsize:
        raise StreamClosed(1007, f"frame of {len(data)} bytes is not a whole number of {fmt} samples "
                                 f"({dtype.itemsize} bytes each)")
    raw = np.frombuffer(data, dtype=dtype)
    if fmt == "s16le":
        return raw.astype(np.float32) / 32768.0
    if not np.isfinite(raw).all():
        raise StreamClosed(1007, "frame holds NaN or infinite samples")
    return raw.astype(np.float32)


def encode_frame(samples: np.ndarray, fmt: str) -> bytes:
    """float32 samples -> the PCM bytes the client declared (int16 saturates)."""
    if fmt == "s16le":
        return (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
    return samples.astype("<f4").tobytes()
