"""audio-preprocessor routes: POST /denoise (batch) and the /denoise/streaming WebSocket. Routes only:
the engines denoise, the runner keeps them off the event loop, the common audio kit decodes/encodes.

Streaming protocol (WebSocket ``/denoise/streaming?rate=16000&format=s16le``):

- ``rate``: sample rate of the client's audio, 8000..192000 Hz; ``format``: ``s16le`` (int16) or ``f32le``
  (float32), little-endian, mono. The server answers in the same rate and format.
- After accepting, the server sends one text message: ``{"type": "ready", "engine", "sample_rate_hz",
  "format", "latency_ms"}`` (``latency_ms``: audio the stream holds back: model delay + framing + resampling).
- The client sends binary messages of PCM (any whole number of samples, at most STREAM_MAX_FRAME_S
  seconds each); the server answers each with a binary message of the enhanced samples ready so far (may be
  empty at the start while the delay fills).
- The client sends the text ``{"type": "end"}`` (or just ``end``); the server sends the remaining samples,
  then ``{"type": "end", "samples_in", "samples_out"}`` (equal) and closes with 1000.
- Errors close the socket with a code and a reason: 1007 a frame that is not a whole number of samples or
  holds non-finite floats, 1009 a frame over the limit, 1003 an unknown text message or bad query
  parameters, 1013 the service is overloaded (try again later), 1011 an engine failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated

from fastapi import APIRouter, FastAPI, File, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import Response

from services.audio_preprocessor.engine import Denoiser, DenoiseStream, build_denoisers
from services.audio_preprocessor.settings import Settings
from services.audio_preprocessor.snr import estimate_snr_db
from services.audio_preprocessor.streaming import FORMATS, StreamClosed, decode_frame, encode_frame
from services.common import metrics
from services.common.app import create_service_app
from services.common.audio import decode_audio, encode_wav
from services.common.errors import BusyError, EngineNotReadyError, InvalidRequestError, PayloadTooLargeError
from services.common.inference import InferenceRunner

log = logging.getLogger(__name__)

def create_app(settings: Settings, engines: tuple[Denoiser, Denoiser] | None = None) -> FastAPI:
    batch, stream_engine = engines or build_denoisers(settings)
    runner = InferenceRunner.from_settings("denoise", settings)
    router = APIRouter()

    def ensure_ready(engine: Denoiser) -> None:
        if not engine.ready():
            raise EngineNotReadyError(f"{engine.name} is still loading; retry shortly", retry_after_s=2)

    @router.post("/denoise", response_class=Response, responses={200: {"content": {"audio/wav": {}}}})
    async def denoise(
        file: Annotated[UploadFile | None, File(description="Audio: WAV, FLAC, OGG or MP3, any rate/channels.")] = None,
        audio: Annotated[UploadFile | None, File(description="Alias of `file` (the plan's field name).")] = None,
    ) -> Response:
        """Denoise one file. Returns 16-bit WAV at the input's rate, channels and length (the engine's delay
        is compensated); the engine is in X-Denoise-Engine, the rate in X-Sample-Rate. A recording whose
        estimated SNR is at least DENOISE_SKIP_ABOVE_SNR_DB comes back as it is (X-Denoised: false): denoising
        clean speech only costs time. The estimate is in X-Estimated-SNR-dB."""
        upload = file or audio
        if upload is None or (file is not None and audio is not None):
            raise InvalidRequestError("send the audio as exactly one multipart field, `file` (or `audio`)",
                                      param="file")
        ensure_ready(batch)
        limit = settings.denoise_max_upload_bytes
        if upload.size is not None and upload.size > limit:
            raise PayloadTooLargeError(f"upload is {upload.size} bytes; the limit is {limit} bytes", param="file")
        data = await upload.read(limit + 1)
        seg = decode_audio(data, max_bytes=limit, max_duration_s=settings.denoise_max_audio_s)
        snr = await asyncio.to_thread(estimate_snr_db, seg.samples, seg.sample_rate)
        headers = {"X-Sample-Rate": str(seg.sample_rate), "X-Audio-Channels": str(seg.channels)}
        if snr is not None:
            headers["X-Estimated-SNR-dB"] = f"{snr:.1f}"
        if snr is not None and snr >= settings.denoise_skip_above_snr_db:
            metrics.AUDIO_SECONDS.labels(metrics.service(), "none", "denoise_skipped").inc(seg.duration_s)
            return Response(encode_wav(seg), media_type="audio/wav",
                            headers={**headers, "X-Denoise-Engine": "none", "X-Denoised": "false"})
        t0 = time.perf_counter()
        out = await runner.run(batch.denoise, seg, operation="denoise")
        labels = (metrics.service(), batch.name, "denoise")
        metrics.AUDIO_SECONDS.labels(*labels).inc(seg.duration_s)
        if seg.duration_s > 0:
            metrics.REAL_TIME_FACTOR.labels(*labels).observe((time.perf_counter() - t0) / seg.duration_s)
        return Response(encode_wav(out), media_type="audio/wav",
                        headers={**headers, "X-Denoise-Engine": batch.name, "X-Denoised": "true"})

    @router.websocket("/denoise/streaming")
    async def denoise_streaming(socket: WebSocket, rate: int = 16000, format: str = "s16le") -> None:
        await socket.accept()
        stream: DenoiseStream | None = None
        samples_in = samples_out = 0
        try:
            if format not in FORMATS:
                raise StreamClosed(1003, f"format must be one of {', '.join(FORMATS)}, got {format!r}")
            if not 8000 <= rate <= 192_000:
                raise StreamClosed(1003, f"rate must be 8000..192000 Hz, got {rate}")
            if not stream_engine.ready():
                raise StreamClosed(1013, f"{stream_engine.name} is still loading; try again shortly")
            stream = stream_engine.open_stream(rate)
            max_bytes = int(settings.stream_max_frame_s * rate) * FORMATS[format].itemsize
            await socket.send_text(json.dumps({"type": "ready", "engine": stream_engine.name, "sample_rate_hz": rate,
                                               "format": format, "latency_ms": round(stream.latency_s * 1000, 1)}))
            while True:
                message = await socket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    data = message["bytes"]
                    if len(data) > max_bytes:
                        raise StreamClosed(1009, f"frame of {len(data)} bytes is over the limit of {max_bytes} "
                                                 f"({settings.stream_max_frame_s} s of audio)")
                    samples = decode_frame(data, format)
                    samples_in += len(samples)
                    out = await runner.run(stream.push, samples, operation="stream_push")
                    samples_out += len(out)
                    await socket.send_bytes(encode_frame(out, format))
                    continue
                text = (message.get("text") or "").strip()
                if text == "end" or text.replace(" ", "") == '{"type":"end"}':
                    out = await runner.run(stream.flush, operation="stream_flush")
                    stream = None
                    samples_out += len(out)
                    await socket.send_bytes(encode_frame(out, format))
                    await socket.send_text(json.dumps({"type": "end", "samples_in": samples_in,
                                                       "samples_out": samples_out}))
                    await socket.close(1000)
                    return
                raise StreamClosed(1003, 'unknown text message; send binary PCM frames, then {"type": "end"}')
        except StreamClosed as closed:
            await socket.close(closed.code, closed.reason[:120])  # a close reason fits in 123 bytes
        except BusyError as exc:
            await socket.close(1013, exc.message[:120])
        except WebSocketDisconnect:
            return
        except Exception:
            log.exception("denoise stream failed")
            await socket.close(1011, "engine failure; see the service log")

    components = [batch] if batch is stream_engine else [batch, stream_engine]
    app = create_service_app(settings, components=components, routers=[router], title="audio-preprocessor")
    app.state.engines = (batch, stream_engine)
    app.state.runner = runner
    return app
