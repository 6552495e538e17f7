"""What the testing UI asks of the fleet, over HTTP (no Gradio here, so it is tested on its own).

A turn goes to ``ORCHESTRATOR_PRIMARY_URL`` (orchestrator-enhanced); when that cannot serve it (unreachable, not
ready, 5xx before the answer started) the same request goes to ``ORCHESTRATOR_FALLBACK_URL`` (the plain
orchestrator) and the turn says so. A 4xx is the user's input being refused: its message is shown, no
fallback. Voice turns are streamed (``/v1/voice/turn/stream``) and `TurnView` is updated event by event, so
the UI shows the transcript, each sentence and the audio so far while the answer goes on.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from services.testing_ui.settings import Settings

PRIMARY = "orchestrator-enhanced"
FALLBACK = "orchestrator"


@dataclass
class TurnView:
    """One turn as the UI shows it, filled in as the answer arrives."""

    kind: str
    """``voice`` or ``text``."""
    served_by: str = ""
    """The orchestrator that answers (``orchestrator-enhanced`` or ``orchestrator``)."""
    fallback_reason: str | None = None
    """Why the primary did not serve the turn, when it did not."""
    transcript: str | None = None
    sentences: list[str] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    """WAV of each spoken sentence, in order."""
    engines: dict[str, str] = field(default_factory=dict)
    blocked: bool = False
    block_reason: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    """What went wrong, said plainly (a refused input's message, or which service is down and why)."""
    done: bool = False
    session_id: str | None = None

    @property
    def answer(self) -> str:
        return " ".join(self.sentences)

    def wav(self) -> tuple[int, np.ndarray] | None:
        """The answer's audio so far, as (sample rate, int16 samples): the sentences one after another."""
        parts: list[np.ndarray] = []
        rate = 0
        for blob in self.audio:
            samples, sr = sf.read(io.BytesIO(blob), dtype="int16", always_2d=True)
            if rate and sr != rate:  # Bark (24 kHz) and Piper (22.05 kHz) sentences in one answer
                samples = _resample(samples, sr, rate)
            rate = rate or sr
            parts.append(samples[:, 0])
        if not parts:
            return None
        return rate, np.concatenate(parts)


def _resample(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    import soxr

    return soxr.resample(samples.astype(np.float32) / 32768, src, dst).clip(-1, 1).__mul__(32767).astype(np.int16)


def _error_message(r: httpx.Response) -> str:
    try:
        err = r.json()["error"]
        return f"{err.get('message') or r.reason_phrase} ({r.status_code} {err.get('code', '')})".replace(" )", ")")
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}: {r.text[:200]}"


class _Unavailable(Exception):
    """The orchestrator could not serve the turn (the next one may)."""


class FleetClient:
    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        headers = {"Authorization": f"Bearer {token}"} if (token := settings.secret_token()) else {}
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(settings.turn_timeout_s, connect=5.0),
                                 transport=transport)
        self.targets = [(PRIMARY, settings.orchestrator_primary_url.rstrip("/"))]
        if settings.orchestrator_fallback_url:
            self.targets.append((FALLBACK, settings.orchestrator_fallback_url.rstrip("/")))

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def new_session() -> str:
        return f"ui-{uuid.uuid4().hex[:12]}"

    # --- fleet state ------------------------------------------------------------------------------------------

    def voices(self) -> tuple[list[str], str | None, str | None]:
        """(voice names: Bark presets, then Piper voices; the default; why there is no list, if there is none)."""
        if not self.settings.voices_url:
            return [], None, "no VOICES_URL set"
        try:
            r = self.http.get(f"{self.settings.voices_url.rstrip('/')}/voices", timeout=5)
        except httpx.HTTPError as exc:
            return [], None, f"tts-bark ({self.settings.voices_url}) unreachable: {type(exc).__name__}"
        if r.status_code != 200:
            return [], None, f"tts-bark: {_error_message(r)}"
        body = r.json()
        names = [v["name"] for v in body.get("bark", [])] + [str(v.get("name", v)) if isinstance(v, dict) else str(v)
                                                           for v in body.get("piper", [])]
        return names, body.get("default"), body.get("piper_error")

    def status(self) -> list[tuple[str, str, str]]:
        """(service, url, "ready" or why not) for each orchestrator."""
        out = []
        for name, url in self.targets:
            try:
                r = self.http.get(f"{url}/health/ready", timeout=5)
                body = r.json()
                state = "ready" if r.status_code == 200 else "not ready: " + "; ".join(body.get("reasons", []))
            except (httpx.HTTPError, ValueError) as exc:
                state = f"unreachable: {type(exc).__name__}"
            out.append((name, url, state))
        return out

    # --- turns ------------------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any] | None:
        """The primary orchestrator's GET /config (feature flags), None when it cannot be asked."""
        try:
            r = self.http.get(f"{self.targets[0][1]}/config", timeout=5)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def text_turn(self, text: str, session_id: str, voice: str | None = None) -> Iterator[TurnView]:
        view = TurnView(kind="text", transcript=text, session_id=session_id)
        body: dict[str, Any] = {"transcript": text, "session_id": session_id, "speak": True}
        if voice:
            body["voice"] = voice
        yield from self._serve(view, lambda url: self._text_at(url, body, view))

    def voice_turn(self, audio_path: str | Path, session_id: str, voice: str | None = None,
                   preprocess: bool | None = None) -> Iterator[TurnView]:
        """``preprocess``: denoise before stt (None: the orchestrator's ENABLE_PREPROCESSING)."""
        view = TurnView(kind="voice", session_id=session_id)
        path = Path(audio_path)
        form: dict[str, str] = {"session_id": session_id}
        if voice:
            form["voice"] = voice
        if preprocess is not None:
            form["preprocess"] = "true" if preprocess else "false"
        data = path.read_bytes()
        yield from self._serve(view, lambda url: self._voice_at(url, path.name, data, form, view))

    def _serve(self, view: TurnView, attempt: Any) -> Iterator[TurnView]:
        reasons: list[str] = []
        for name, url in self.targets:
            view.served_by = name
            view.fallback_reason = "; ".join(reasons) or None
            try:
                yield from attempt(url)
                return
            except _Unavailable as exc:
                reasons.append(f"{name} ({url}): {exc}")
        view.served_by = ""
        view.error = "no orchestrator could serve the turn: " + "; ".join(reasons)
        view.done = True
        yield view

    def _post(self, url: str, **kw: Any) -> httpx.Response:
        try:
            return self.http.post(url, **kw)
        except httpx.TransportError as exc:
            raise _Unavailable(f"unreachable ({type(exc).__name__})") from exc

    def _text_at(self, base: str, body: dict[str, Any], view: TurnView) -> Iterator[TurnView]:
        r = self._post(f"{base}/mcp/transcript", json=body)
        if r.status_code >= 500:
            raise _Unavailable(_error_message(r))
        if r.status_code != 200:
            view.error, view.done = _error_message(r), True
            yield view
            return
        data = r.json()
        view.sentences = [data.get("response") or ""]
        if data.get("audio"):
            view.audio = [base64.b64decode(data["audio"])]
        self._finish(view, data)
        yield view

    def _voice_at(self, base: str, name: str, data: bytes, form: dict[str, str],
                  view: TurnView) -> Iterator[TurnView]:
        try:
            with self.http.stream("POST", f"{base}/v1/voice/turn/stream", files={"file": (name, data)},
                                  data=form) as r:
                if r.status_code >= 500:
                    r.read()
                    raise _Unavailable(_error_message(r))
                if r.status_code != 200:
                    r.read()
                    view.error, view.done = _error_message(r), True
                    yield view
                    return
                for event, payload in _sse(r.iter_lines()):
                    if self._apply(view, event, payload):
                        yield view
        except httpx.TransportError as exc:
            if view.transcript is None:  # nothing arrived yet: the next orchestrator may serve it
                raise _Unavailable(f"unreachable ({type(exc).__name__})") from exc
            view.error = f"{view.served_by} stopped answering mid-turn ({type(exc).__name__})"
        if not view.done:
            view.done = True
            view.error = view.error or f"{view.served_by} ended the answer without finishing it"
        yield view

    def _apply(self, view: TurnView, event: str, data: dict[str, Any]) -> bool:
        if event == "transcript":
            view.transcript = data.get("text", "")
            if "denoised" in data:
                view.engines["denoise"] = _denoise(data["denoised"])
        elif event == "text":
            view.sentences.append(data.get("text", ""))
        elif event == "audio":
            view.audio.append(base64.b64decode(data["audio"]))
            view.engines.setdefault("tts", f"{data.get('tts_service')} ({data.get('tts_engine')})")
        elif event == "audio_error":
            view.notes.append(f"sentence {data.get('index')}: {data.get('message')}")
        elif event == "done":
            self._finish(view, data)
        elif event == "error":
            err = data.get("error", data)
            view.error, view.done = f"{err.get('message')} ({err.get('code')})", True
        else:
            return False
        return True

    @staticmethod
    def _finish(view: TurnView, data: dict[str, Any]) -> None:
        view.done = True
        view.session_id = data.get("session_id", view.session_id)
        view.blocked = bool(data.get("blocked"))
        view.block_reason = data.get("block_reason")
        view.tool_calls = list(data.get("tool_calls") or [])
        view.timings = dict(data.get("timings") or {})
        view.notes += list(data.get("notes") or [])
        if "denoised" in data:
            view.engines["denoise"] = _denoise(data["denoised"])
        if data.get("transcript") is not None and view.transcript is None:
            view.transcript = data["transcript"]
        view.engines["llm"] = data.get("llm_engine") or ("none (answered before the LLM)" if view.blocked
                                                          else "none (local intent)")
        if data.get("tts_service"):
            view.engines["tts"] = f"{data['tts_service']} ({data.get('tts_engine')})"
        view.engines["mode"] = data.get("mode", "")


def _denoise(denoised: bool) -> str:
    return "audio-preprocessor (denoised)" if denoised else "audio-preprocessor (left as recorded: clean, or unavailable)"


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    event = "message"
    for line in lines:
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: "):
            try:
                yield event, json.loads(line[6:])
            except ValueError:
                continue
            event = "message"
