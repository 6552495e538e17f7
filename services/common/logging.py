"""Structured logging: one JSON object per line with service, level, logger, message and correlation_id.

`configure_logging(service, level=..., json_logs=...)` is called once per process by `run_service`. The correlation id comes from the
request context (`services.common.context`), so every record logged while serving a request carries
the id the caller sent in ``X-Correlation-ID`` (or the one generated for it). Extra fields passed with
``logger.info("...", extra={"engine": "piper"})`` become JSON keys.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from services.common import context


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.correlation_id = context.get_correlation_id()
        record.__dict__.pop("color_message", None)  # uvicorn's ANSI-coloured duplicate of the message
        return True


def configure_logging(service: str, *, level: str = "INFO", json_logs: bool = True, stream=None) -> None:
    """Route root and uvicorn logs through one handler with the fleet's format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_ContextFilter(service))
    if json_logs:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(correlation_id)s",
                rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(service)s [%(correlation_id)s] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # The app factory logs each request itself (with route, status, duration); uvicorn's access log
    # would duplicate it without the correlation id.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx/httpcore log every request at INFO (health polls every few seconds, each LLM call of the openai
    # client); the fleet's own client logs what matters (failures, fallbacks, circuit changes).
    # LOG_LEVEL=DEBUG shows them again.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.NOTSET if level == "DEBUG" else logging.WARNING)
