"""Per-request context that crosses service boundaries: correlation id and deadline.

Both live in contextvars, set by the app factory's middleware from the incoming headers and read by
`services.common.http` when it calls the next service, so a chain of calls shares one id and one
time budget:

- ``X-Correlation-ID``: accepted if it looks sane (<= 128 chars of ``[A-Za-z0-9._:-]``), else a new one.
- ``X-Deadline-Ms``: the caller's remaining budget in milliseconds. Relative, so clocks need not agree.
  The callee's deadline is ``now + budget``; whatever it calls next gets what is left of that.
"""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from dataclasses import dataclass

CORRELATION_HEADER = "X-Correlation-ID"
DEADLINE_HEADER = "X-Deadline-Ms"

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
_deadline: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("deadline", default=None)

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def accept_correlation_id(value: str | None) -> str:
    """The incoming id if it is safe to log and forward, else a fresh one."""
    if value and _SANE_ID.match(value):
        return value
    return new_correlation_id()


def get_correlation_id() -> str | None:
    return _correlation_id.get()


def set_correlation_id(value: str | None) -> contextvars.Token:
    return _correlation_id.set(value)


@dataclass(frozen=True)
class Deadline:
    """An absolute point on the monotonic clock by which the work must be done."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def header_value(self) -> str:
        return str(int(self.remaining() * 1000))

    @classmethod
    def from_header(cls, value: str | None) -> Deadline | None:
        """Parse ``X-Deadline-Ms``; ignore garbage rather than fail the request."""
        if not value:
            return None
        try:
            ms = float(value)
        except ValueError:
            return None
        if ms != ms or ms < 0:  # NaN or negative
            return None
        return cls.after(ms / 1000.0)

    def sooner(self, seconds: float | None) -> Deadline:
        """The earlier of this deadline and ``now + seconds``."""
        if seconds is None:
            return self
        other = Deadline.after(seconds)
        return other if other.at < self.at else self


def get_deadline() -> Deadline | None:
    return _deadline.get()


def set_deadline(value: Deadline | None) -> contextvars.Token:
    return _deadline.set(value)


def effective_deadline(timeout_s: float | None) -> Deadline | None:
    """The current request's deadline, tightened by a local timeout if one is given."""
    current = get_deadline()
    if current is None:
        return Deadline.after(timeout_s) if timeout_s is not None else None
    return current.sooner(timeout_s)


PRIMARY_SHARE = 0.6
"""Share of a request's remaining time a primary may use when a fallback waits behind it."""


def primary_budget(cap_s: float) -> float:
    """Seconds a primary (LLM, TTS) may take with a fallback behind it: at most ``cap_s`` and at most
    PRIMARY_SHARE of what is left of the request's deadline, so the fallback always has time."""
    current = get_deadline()
    return cap_s if current is None else min(cap_s, current.remaining() * PRIMARY_SHARE)


def reset_correlation_id(token: contextvars.Token) -> None:
    _correlation_id.reset(token)


def reset_deadline(token: contextvars.Token) -> None:
    _deadline.reset(token)
