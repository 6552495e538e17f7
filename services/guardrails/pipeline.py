"""Input and output pipelines: scanners in order, one verdict, metrics, the fail mode.

`Pipeline.run` is blocking (regexes, Presidio, models) and runs in the `Guard`'s inference runner, never
on the event loop. Each scanner gets the previous one's ``sanitized`` text. A scanner that raises is
handled by GUARDRAILS_FAIL_MODE: ``closed`` makes the verdict unsafe (reason ``guardrail_error``), ``open``
skips that scanner; either way the error is logged and counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from services.common import metrics
from services.common.errors import EngineNotReadyError
from services.common.inference import InferenceRunner
from services.guardrails.normalize import clean
from services.guardrails.scanners import ModelScanner, Scanner, Shared, build_scanners
from services.guardrails.settings import Settings

log = logging.getLogger(__name__)

FailMode = Literal["closed", "open"]
REASONS = ("too_long", "injection", "jailbreak", "toxicity", "guardrail_error", "pii")
"""Every value of ``reason`` in answers and of the ``reason`` label of guardrail_blocks_total (``pii``
counts outputs whose PII was redacted; those outputs still pass)."""


@dataclass(frozen=True)
class Verdict:
    safe: bool
    reason: str | None
    """The first blocking scanner's reason (see `REASONS`); None when safe."""
    text: str
    """The last scanner's sanitized text: normalised input, or output with PII replaced."""
    scores: dict[str, float] = field(default_factory=dict)
    """Risk per scanner that ran, 0..1."""
    details: dict[str, list[str]] = field(default_factory=dict)
    """Per scanner, what fired (rule names, labels, PII types); scanners with nothing to say are left out."""
    errors: list[str] = field(default_factory=list)
    """Scanners that raised (their checks did not run)."""


class Pipeline:
    def __init__(self, scanners: list[Scanner], *, fail_mode: FailMode = "closed") -> None:
        self.scanners = scanners
        self.fail_mode = fail_mode

    def run(self, text: str) -> Verdict:
        current = text
        reason: str | None = None
        scores: dict[str, float] = {}
        details: dict[str, list[str]] = {}
        errors: list[str] = []
        for scanner in self.scanners:
            t0 = time.perf_counter()
            try:
                result = scanner.scan(current)
            except Exception:
                log.exception("guardrail check %s failed (fail mode %s)", scanner.name, self.fail_mode)
                metrics.ENGINE_ERRORS.labels(metrics.service(), scanner.name, "exception").inc()
                errors.append(scanner.name)
                if self.fail_mode == "closed" and reason is None:
                    reason = "guardrail_error"
                continue
            finally:
                metrics.GUARDRAIL_LATENCY.labels(metrics.service(), scanner.name).observe(time.perf_counter() - t0)
            current = result.sanitized
            scores[scanner.name] = result.risk
            if result.details:
                details[scanner.name] = list(result.details)
            if not result.valid and reason is None:
                reason = result.reason or "injection"
        return Verdict(reason is None, reason, current, scores, details, errors)


class Guard:
    """Both pipelines, their model-backed scanners (app components) and the runner that keeps them off the loop."""

    def __init__(self, settings: Settings, *, input_scanners: list[Scanner] | None = None,
                 output_scanners: list[Scanner] | None = None) -> None:
        self.settings = settings
        shared = Shared(settings)
        if input_scanners is None:
            input_scanners = build_scanners(settings.guardrails_input_scanners, shared)
        if output_scanners is None:
            output_scanners = build_scanners(settings.guardrails_output_scanners, shared)
        self.input = Pipeline(input_scanners, fail_mode=settings.guardrails_fail_mode)
        self.output = Pipeline(output_scanners, fail_mode=settings.guardrails_fail_mode)
        seen: dict[int, ModelScanner] = {}
        for s in (*input_scanners, *output_scanners):
            if isinstance(s, ModelScanner):
                seen.setdefault(id(s), s)
        self.models: list[ModelScanner] = list(seen.values())
        self.runner = InferenceRunner.from_settings("guardrails", settings)

    def components(self) -> list[ModelScanner]:
        """The scanners with weights: /health/ready waits for each."""
        return list(self.models)

    def _require_ready(self) -> None:
        loading = [m.name for m in self.models if not m.ready()]
        if loading:
            raise EngineNotReadyError(f"guardrail checks not loaded yet: {', '.join(loading)} (see /health/ready)",
                                      retry_after_s=2)

    def _count(self, verdict: Verdict) -> None:
        if verdict.reason:
            metrics.GUARDRAIL_BLOCKS.labels(metrics.service(), verdict.reason).inc()
        if verdict.details.get("pii"):
            metrics.GUARDRAIL_BLOCKS.labels(metrics.service(), "pii").inc()

    def too_long(self, text: str) -> Verdict | None:
        limit = self.settings.max_input_length
        if len(text) <= limit:
            return None
        return Verdict(False, "too_long", clean(text), {}, {"length": [f"{len(text)} > {limit} characters"]})

    async def validate_input(self, text: str) -> Verdict:
        verdict = self.too_long(text)
        if verdict is None:
            self._require_ready()
            verdict = await self.runner.run(self.input.run, text, operation="validate_input")
        self._count(verdict)
        return verdict

    async def validate_output(self, text: str) -> Verdict:
        self._require_ready()
        verdict = await self.runner.run(self.output.run, text, operation="validate_output")
        self._count(verdict)
        return verdict

    def describe(self) -> dict[str, Any]:
        return {"input_scanners": [s.name for s in self.input.scanners],
                "output_scanners": [s.name for s in self.output.scanners],
                "max_input_length": self.settings.max_input_length,
                "pattern_threshold": self.settings.guardrails_pattern_threshold,
                "fail_mode": self.settings.guardrails_fail_mode}

    def shutdown(self) -> None:
        self.runner.shutdown()
