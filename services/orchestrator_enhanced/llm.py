"""The agent's LLMs: LangChain ``ChatOpenAI`` clients of our OpenAI-compatible servers, and the middleware that
puts the fallback LLM behind the primary.

`FailoverMiddleware` wraps every model call of the agent (``awrap_model_call``):

- **Primary first, within its own budget.** The primary gets ``min(LLM_PRIMARY_TIMEOUT_S, 60 % of what is left
  of the turn)`` so the fallback always has time; the fallback gets the rest of the turn's deadline. No retries
  inside a call (``max_retries=0``): budgets never multiply.
- **Circuit breaker.** Consecutive primary failures (connection errors, timeouts, 5xx such as llm-flan's
  ``engine_not_ready``) open a `CircuitBreaker`; while it is open turns go straight to the fallback (reason
  ``circuit_open``), and after ``BREAKER_RESET_S`` one turn probes the primary: turns go back to it as soon
  as it answers again. A 4xx (e.g. a prompt longer than FLAN-T5's context) is tried on the fallback too, but
  it does not count against the primary's health.
- **Headers.** Every call carries the turn's correlation id and ``X-Deadline-Ms``, so llm-flan/llm stop work
  the orchestrator no longer waits for.
- **Which model answered** is written into the answer's ``response_metadata["llm_engine"]`` (the model name of
  the server that served it) and fallbacks are counted in ``engine_fallbacks_total`` and
  ``orchestrator_fallbacks_total{stage="llm"}``.
- **Step limit.** The last allowed model call of a turn (``AGENT_MAX_STEPS``) may call no tool (``allowed_tools``
  empty: the tools stay in the prompt), and so may the call after the model repeated a tool call (same tool,
  same arguments) within the turn, so a model that keeps calling tools still ends with an answer.

Streaming: when the agent is streamed, ``ChatOpenAI`` streams tokens; a primary that fails before its first
token is replaced by the fallback without the caller noticing. (One that fails mid-answer is too, but the
tokens it already streamed were streamed.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import openai
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_openai import ChatOpenAI

from services.common import context
from services.common.errors import DeadlineExceededError, UpstreamUnavailableError
from services.common.http import CircuitBreaker
from services.common.metrics import FALLBACKS, ORCH_FALLBACKS, service
from services.orchestrator_enhanced.settings import Settings

log = logging.getLogger(__name__)

def openai_base_url(url: str) -> str:
    """``http://host:port`` -> ``http://host:port/v1`` (kept when it already ends in /v1)."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def chat_model(base_url: str, model: str, settings: Settings) -> ChatOpenAI:
    """A ``ChatOpenAI`` client of one of our servers: no retries (failover instead), the fleet token as API key,
    no proxies, streaming usage off (our servers send it only when asked)."""
    return ChatOpenAI(
        base_url=openai_base_url(base_url),
        model=model,
        api_key=settings.secret_token() or "not-needed",
        temperature=settings.llm_temperature,
        max_completion_tokens=settings.llm_max_tokens,
        max_retries=0,
        timeout=settings.request_timeout_s,
        http_async_client=httpx.AsyncClient(trust_env=False, timeout=settings.request_timeout_s),
        http_client=httpx.Client(trust_env=False, timeout=settings.request_timeout_s),
    )


def build_models(settings: Settings) -> tuple[BaseChatModel, BaseChatModel | None]:
    """(primary, fallback or None) from LLM_PRIMARY_URL / LLM_FALLBACK_URL."""
    primary = chat_model(settings.llm_primary_url, settings.llm_primary_model, settings)
    fallback = None
    if settings.llm_fallback_url:
        fallback = chat_model(settings.llm_fallback_url, settings.llm_fallback_model, settings)
    return primary, fallback


def allowed_tools(names: list[str]) -> dict[str, Any]:
    """OpenAI's ``allowed_tools`` tool choice: every bound tool stays in the prompt (the LLM server's prompt
    cache keeps it: a prompt without them, or with others, is evaluated afresh, seconds on a CPU) but only
    ``names`` may be called; none: the model can only answer."""
    return {"type": "allowed_tools",
            "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": n}} for n in names]}}


def model_label(model: BaseChatModel) -> str:
    """The name a model is reported under (its ``model_name``, e.g. ``llm-flan``)."""
    return str(getattr(model, "model_name", None) or getattr(model, "model", None) or type(model).__name__)


def _failure_reason(exc: BaseException) -> tuple[str, bool]:
    """(reason label, counts against the primary's health)."""
    if isinstance(exc, (TimeoutError, openai.APITimeoutError, DeadlineExceededError)):
        return "timeout", True
    if isinstance(exc, (openai.APIConnectionError, UpstreamUnavailableError, httpx.TransportError)):
        return "unavailable", True
    if isinstance(exc, openai.APIStatusError):
        return "error", exc.status_code >= 500 or exc.status_code == 429
    return "error", True


class FailoverMiddleware(AgentMiddleware):
    """Primary LLM, then fallback, per model call (see the module docstring)."""

    def __init__(self, primary: BaseChatModel, fallback: BaseChatModel | None, *, max_steps: int,
                 primary_timeout_s: float, breaker: CircuitBreaker) -> None:
        super().__init__()
        self.primary = primary
        self.fallback = fallback
        self.max_steps = max_steps
        self.primary_timeout_s = primary_timeout_s
        self.breaker = breaker

    @property
    def name(self) -> str:  # AgentMiddleware uses the class name by default; keep it stable
        return "FailoverMiddleware"

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        raise NotImplementedError("the orchestrator runs its agent asynchronously (ainvoke/astream)")

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse | AIMessage:
        request = self._limit_steps(self._with_headers(request))
        primary_error: BaseException | None = None
        reason = "circuit_open"
        if self.breaker.allow():
            budget = self._budget(primary=True)
            try:
                async with asyncio.timeout(budget):
                    response = await handler(request.override(model=self.primary))
            except asyncio.CancelledError:
                self.breaker.release()
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the primary is worth the fallback
                primary_error = exc
                reason, unhealthy = _failure_reason(exc)
                if unhealthy:
                    self.breaker.record_failure()
                else:
                    self.breaker.record_success()
                log.warning("primary LLM failed (%s): %s", reason, _describe(exc),
                            extra={"target": model_label(self.primary), "reason": reason})
            else:
                self.breaker.record_success()
                return _tag(response, model_label(self.primary))
        if self.fallback is None:
            if primary_error is not None:
                raise primary_error
            raise UpstreamUnavailableError(f"{model_label(self.primary)} unreachable: circuit open, and no "
                                           "fallback LLM is configured (LLM_FALLBACK_URL)")
        budget = self._budget(primary=False)
        try:
            async with asyncio.timeout(budget):
                response = await handler(request.override(model=self.fallback))
        except TimeoutError as exc:
            raise DeadlineExceededError(f"no LLM answered in time: {model_label(self.primary)} ({reason}), "
                                        f"{model_label(self.fallback)} (timeout)") from exc
        FALLBACKS.labels(service(), model_label(self.primary), model_label(self.fallback), reason).inc()
        ORCH_FALLBACKS.labels(service(), "llm", reason).inc()
        return _tag(response, model_label(self.fallback))

    def _budget(self, *, primary: bool) -> float | None:
        deadline = context.get_deadline()
        left = deadline.remaining() if deadline is not None else None
        if left is not None and left <= 0:
            raise DeadlineExceededError("the turn's deadline passed before the LLM call")
        if not primary or self.fallback is None:
            return left
        return context.primary_budget(self.primary_timeout_s)

    def _with_headers(self, request: ModelRequest) -> ModelRequest:
        headers = dict(request.model_settings.get("extra_headers") or {})
        cid = context.get_correlation_id()
        if cid:
            headers[context.CORRELATION_HEADER] = cid
        deadline = context.get_deadline()
        if deadline is not None:
            headers[context.DEADLINE_HEADER] = deadline.header_value()
        if not headers:
            return request
        return request.override(model_settings={**request.model_settings, "extra_headers": headers})

    def _limit_steps(self, request: ModelRequest) -> ModelRequest:
        """No tools for the turn's last allowed model call, nor once the model repeats a tool call it already
        made this turn (a small model looping on one tool). The turn's model calls so far are the AI messages
        after its (last) human message."""
        calls = 0
        seen: set[str] = set()
        repeated = False
        for message in reversed(request.messages):
            if isinstance(message, HumanMessage):
                break
            if isinstance(message, AIMessage):
                calls += 1
                for tc in message.tool_calls:
                    key = tc["name"] + json.dumps(tc.get("args") or {}, sort_keys=True)
                    repeated = repeated or key in seen
                    seen.add(key)
        if (calls + 1 >= self.max_steps or repeated) and request.tools:
            return request.override(tool_choice=allowed_tools([]))
        return request


def _tag(response: ModelResponse | AIMessage, engine: str) -> ModelResponse | AIMessage:
    messages = [response] if isinstance(response, AIMessage) else response.result
    for message in messages:
        if isinstance(message, AIMessage):
            message.response_metadata["llm_engine"] = engine
    return response


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
