"""One error shape for the whole fleet.

Every 4xx/5xx body is::

    {"error": {"message", "type", "param", "code", "retryable", "correlation_id"}}

which is OpenAI's envelope (message/type/param/code) plus two fields of ours, so OpenAI clients
read our errors. Our own client (`services.common.http`) turns an error answer into
`UpstreamFailedError` carrying the upstream's ``code`` (``upstream_code``), status and ``retryable``:
a caller decides whether a downstream 4xx is its own caller's fault. Retry and fallback decisions read
`retryable`, never message text.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """Base of every error a service answers with. Subclasses fix code, status and retryability."""

    code: ClassVar[str] = "engine_failed"
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = dict(headers or {})
        self.retry_after_s = retry_after_s
        if retry_after_s is not None:
            # Retry-After is whole seconds; never advertise 0 (clients would hammer).
            self.headers.setdefault("Retry-After", str(max(1, round(retry_after_s + 0.499))))

    @property
    def openai_type(self) -> str:
        return "invalid_request_error" if self.http_status < 500 else "server_error"

    def body(self, correlation_id: str | None = None) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.openai_type,
                "param": self.param,
                "code": self.code,
                "retryable": self.retryable,
                "correlation_id": correlation_id,
            }
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole (the llm service's child process sends errors to its parent): the default pickling of
        # an exception calls __init__(*args) again, which loses param, headers and instance overrides.
        return (_restore, (type(self), self.message, self.__dict__.copy()))


def _restore(cls: type[ServiceError], message: str, state: dict[str, Any]) -> ServiceError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


# --- not retryable: the same request will fail the same way --------------------------------------


class InvalidRequestError(ServiceError):
    """The request is malformed or out of range; the message says what is accepted."""

    code = "invalid_request"
    http_status = 422


class InvalidAudioError(InvalidRequestError):
    """Audio bytes that cannot be decoded (empty, truncated, not audio, unsupported container)."""

    code = "invalid_audio"


class PayloadTooLargeError(InvalidRequestError):
    code = "payload_too_large"
    http_status = 413


class UnauthorizedError(ServiceError):
    code = "unauthorized"
    http_status = 401


class NotFoundError(ServiceError):
    code = "not_found"
    http_status = 404


class GuardrailBlockedError(ServiceError):
    code = "guardrail_blocked"
    http_status = 400


class EngineFailedError(ServiceError):
    """The engine raised on a valid request; retrying the same engine is pointless."""

    code = "engine_failed"
    http_status = 500


# --- retryable: another attempt, later or elsewhere, may succeed -------------------------------------


class EngineNotReadyError(ServiceError):
    code = "engine_not_ready"
    http_status = 503
    retryable = True


class BusyError(ServiceError):
    """Overload: the bounded queue is full or a waiter ran out of time. Carries Retry-After."""

    code = "busy"
    http_status = 503
    retryable = True

    def __init__(self, message: str = "service is busy, retry later", *, retry_after_s: float = 1.0, **kw: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **kw)


class RateLimitedError(ServiceError):
    code = "rate_limited"
    http_status = 429
    retryable = True


class DeadlineExceededError(ServiceError):
    code = "deadline_exceeded"
    http_status = 504
    retryable = True


class UpstreamUnavailableError(ServiceError):
    """A dependency could not be reached (connection refused, circuit open, timed out)."""

    code = "upstream_unavailable"
    http_status = 503
    retryable = True


class UpstreamFailedError(ServiceError):
    """A dependency answered with an error; `retryable` follows what the upstream said."""

    code = "upstream_failed"
    http_status = 502

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        upstream_status: int | None = None,
        upstream_code: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.retryable = retryable  # type: ignore[misc]  # instance override of the class default
        self.upstream_status = upstream_status
        self.upstream_code = upstream_code


# Status codes worth retrying when a body does not say (LiveKit's rule: 4xx are final except these).
RETRYABLE_STATUS = frozenset({408, 425, 429, 499, 502, 503, 504})
