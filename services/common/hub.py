"""Finding model files: a local dir, or a Hugging Face hub id from the cache, downloaded only when allowed.

Shared by the services that load hub models (audio-preprocessor's MetricGAN+, llm-flan, ...). Offline is the
normal case here: a hub id that is not in the cache fails fast with a reason (no ~25 s of retries against
an unreachable hub), and ``HF_HUB_OFFLINE`` / ``HF_HOME`` / ``HF_HUB_CACHE`` are respected because the
look-ups go through huggingface_hub itself. Downloads show huggingface_hub's progress bars on stderr.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PROBE_TIMEOUT_S = 3.0
"""How long to wait to reach the hub before a download (instead of huggingface_hub's retries)."""


class ModelNotFoundError(RuntimeError):
    """The model is neither a usable local dir nor available from the cache or the hub; says why."""


def is_local_path(model: str) -> bool:
    """A name that denotes a directory: absolute, ``./``, ``../``, ``~``, or an existing directory."""
    return model.startswith(("/", "./", "../", "~", ".\\", "..\\")) or Path(model).expanduser().is_dir()


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub read it at import, or as the environment says now."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return True


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached within `HUB_PROBE_TIMEOUT_S`, or None (also None behind a proxy, which
    a direct connection cannot test)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"cannot reach {constants.ENDPOINT} ({exc})"
    return None


def resolve_model_dir(model: str, *, allow_download: bool = True, required: Sequence[str] = ("config.json",),
                      allow_patterns: Sequence[str] | None = None, cache_dir: Path | None = None) -> Path:
    """A directory holding ``model``'s files: the local dir itself, or the hub snapshot from the cache,
    downloading it (with progress) only if ``allow_download``, the hub is not offline and it answers.

    Raises `ModelNotFoundError` with the reason and what is accepted."""
    if is_local_path(model):
        directory = Path(model).expanduser()
        if not directory.is_dir():
            raise ModelNotFoundError(f"model directory {directory} does not exist")
        missing = [name for name in required if not (directory / name).is_file()]
        if missing:
            raise ModelNotFoundError(f"model directory {directory} lacks {', '.join(missing)}")
        return directory
    if not HUB_ID.match(model):
        raise ModelNotFoundError(f"{model!r} is not a model: accepted are a Hugging Face hub id (owner/name) "
                                 "or a local directory")
    from huggingface_hub import snapshot_download

    patterns = list(allow_patterns) if allow_patterns else None
    try:
        return Path(snapshot_download(model, local_files_only=True, allow_patterns=patterns, cache_dir=cache_dir))
    except Exception as exc:  # LocalEntryNotFoundError and friends: not (fully) cached
        cached_error = exc
    if not allow_download or hub_offline():
        why = "downloads are off" if not allow_download else "HF_HUB_OFFLINE is set"
        raise ModelNotFoundError(f"{model} is not in the Hugging Face cache and {why} "
                                 f"({type(cached_error).__name__})")
    unreachable = hub_unreachable()
    if unreachable:
        raise ModelNotFoundError(f"{model} is not in the Hugging Face cache and the hub is unreachable: {unreachable}")
    log.info("downloading %s from the Hugging Face hub (progress on stderr)", model)
    try:
        return Path(snapshot_download(model, allow_patterns=patterns, cache_dir=cache_dir))
    except Exception as exc:
        raise ModelNotFoundError(f"downloading {model} failed: {type(exc).__name__}: {exc}") from exc
