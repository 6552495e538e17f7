"""Test doubles for the guardrails service, importable by other services' tests."""

from __future__ import annotations

from services.guardrails.scanners import BlockReason, ScanResult


class FakeScanner:
    """Implements `Scanner`: answers with the given risk (invalid at or above ``threshold``), or raises
    ``fail_with``; records every text it saw in ``calls``."""

    def __init__(self, name: str = "fake", *, risk: float = 0.0, threshold: float = 0.5,
                 reason: BlockReason = "injection", fail_with: Exception | None = None,
                 sanitize: str | None = None) -> None:
        self.name = name
        self.risk = risk
        self.threshold = threshold
        self.reason = reason
        self.fail_with = fail_with
        self.sanitize = sanitize
        self.calls: list[str] = []

    def scan(self, text: str) -> ScanResult:
        self.calls.append(text)
        if self.fail_with is not None:
            raise self.fail_with
        valid = self.risk < self.threshold
        out = text if self.sanitize is None else self.sanitize
        return ScanResult(out, valid, self.risk, None if valid else self.reason, () if valid else (self.name,))
