"""The orchestrator's side of guardrails: /validate/input before the agent, /validate/output after it, /escalate
for refused inputs, and the fail mode when guardrails cannot answer.

``GUARDRAILS_FAIL_MODE=closed`` (default): guardrails unreachable, timing out or failing -> the input is treated
as unsafe (reason ``guardrails_unavailable``) and the user hears a short apology; an answer that cannot be
checked is withheld the same way. ``open``: the turn goes on unchecked. Either way the event is logged and
counted in ``orchestrator_fallbacks_total{stage="guardrails"}``. A 429 from guardrails (its own per-client
limit) is passed on to the caller as 429.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import RateLimitedError, ServiceError
from services.common.http import ServiceClient
from services.common.metrics import ORCH_FALLBACKS, service
from services.orchestrator_enhanced.settings import Settings
from services.orchestrator_enhanced.turn import TurnContext

log = logging.getLogger(__name__)

UNAVAILABLE = "guardrails_unavailable"


@dataclass
class Check:
    safe: bool
    reason: str | None
    text: str
    """Input: the sanitized transcript. Output: the text with PII redacted."""
    checked: bool = True
    """False when guardrails were skipped (disabled, or down with fail mode open)."""
    details: dict[str, Any] = field(default_factory=dict)


class Guardrails:
    """Client of the guardrails service (or a pass-through when ENABLE_GUARDRAILS is false)."""

    def __init__(self, settings: Settings, client: ServiceClient | None = None) -> None:
        self.settings = settings
        self.enabled = settings.enable_guardrails
        self.client = client or ServiceClient.from_settings("guardrails", settings.guardrails_url, settings)

    def _headers(self, ctx: TurnContext) -> dict[str, str]:
        headers = {"X-Session-Id": ctx.session_id[:128]}
        if ctx.user_id:
            headers["X-Client-Id"] = ctx.user_id[:128]
        return headers

    def _unreachable(self, what: str, exc: ServiceError, text: str) -> Check:
        ORCH_FALLBACKS.labels(service(), "guardrails", self.settings.guardrails_fail_mode).inc()
        if self.settings.guardrails_fail_mode == "open":
            log.warning("guardrails %s failed; fail mode open: going on unchecked: %s", what, exc.message)
            return Check(True, None, text, checked=False)
        log.error("guardrails %s failed; fail mode closed: refusing: %s", what, exc.message)
        return Check(False, UNAVAILABLE, text, checked=False)

    async def check_input(self, text: str, ctx: TurnContext) -> Check:
        if not self.enabled:
            return Check(True, None, text, checked=False)
        try:
            r = await self.client.post("/validate/input", json={"text": text, "session_id": ctx.session_id},
                                       headers=self._headers(ctx), timeout_s=self.settings.guardrails_timeout_s,
                                       idempotent=True)
        except ServiceError as exc:
            if getattr(exc, "upstream_status", None) == 429:
                raise RateLimitedError(f"too many requests for this client ({exc.message})",
                                       retry_after_s=exc.retry_after_s or 1) from exc
            return self._unreachable("/validate/input", exc, text)
        body = r.json()
        return Check(bool(body["safe"]), body.get("reason"), body.get("sanitized") or text,
                     details={"scores": body.get("scores", {}), "fired": body.get("details", {})})

    async def check_output(self, text: str, ctx: TurnContext) -> Check:
        if not self.enabled or not text.strip():
            return Check(True, None, text, checked=False)
        try:
            r = await self.client.post("/validate/output", json={"text": text}, headers=self._headers(ctx),
                                       timeout_s=self.settings.guardrails_timeout_s, idempotent=True)
        except ServiceError as exc:
            return self._unreachable("/validate/output", exc, text)
        body = r.json()
        return Check(bool(body["safe"]), body.get("reason"), body.get("filtered") or text,
                     details={"scores": body.get("scores", {}), "redactions": body.get("redactions", {})})

    async def escalate(self, reason: str, context: dict[str, Any], ctx: TurnContext) -> bool:
        """Keep a refused turn for human review; False (logged) when guardrails cannot take it."""
        if not self.enabled:
            return False
        try:
            await self.client.post("/escalate", json={"reason": reason[:500], "context": context,
                                                      "session_id": ctx.session_id[:128]},
                                   headers=self._headers(ctx), timeout_s=self.settings.guardrails_timeout_s)
        except ServiceError as exc:
            log.error("could not escalate a refused turn: %s", exc.message, extra={"reason": reason})
            return False
        return True
