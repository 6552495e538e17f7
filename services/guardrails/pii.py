"""PII redaction with Presidio's pattern recognizers: no spaCy model, no network.

Presidio's `AnalyzerEngine` normally loads a spaCy pipeline for names and places; here it runs on its
`NoOpNlpEngine`, so only self-contained recognizers work, which is what the supported types need:

=================  ===========================  =====================================================
type               placeholder                  recognizer (validation)
=================  ===========================  =====================================================
EMAIL_ADDRESS      ``[EMAIL_REDACTED]``         Presidio's regex; the domain must have a public suffix
                                                (tldextract's bundled list, never fetched)
PHONE_NUMBER       ``[PHONE_REDACTED]``         python-phonenumbers' matcher over `PHONE_REGIONS`
US_SSN             ``[SSN_REDACTED]``           Presidio's patterns; invalid groups (000, 666, 00, 0000)
                                                and published sample numbers are refused
CREDIT_CARD        ``[CREDIT_CARD_REDACTED]``   12-19 digits with a card prefix, Luhn checksum
IP_ADDRESS         ``[IP_ADDRESS_REDACTED]``    IPv4/IPv6 (incl. CIDR), parsed by ``ipaddress``
IBAN_CODE          ``[IBAN_REDACTED]``          country format + ISO 13616 mod-97 checksum
=================  ===========================  =====================================================

Where two findings overlap, the higher score wins (a validated card over a phone-like digit run); the
survivors are replaced by presidio-anonymizer's ``replace`` operator.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

PLACEHOLDERS = {
    "EMAIL_ADDRESS": "[EMAIL_REDACTED]",
    "PHONE_NUMBER": "[PHONE_REDACTED]",
    "US_SSN": "[SSN_REDACTED]",
    "CREDIT_CARD": "[CREDIT_CARD_REDACTED]",
    "IP_ADDRESS": "[IP_ADDRESS_REDACTED]",
    "IBAN_CODE": "[IBAN_REDACTED]",
}
"""Presidio entity type -> the typed placeholder that replaces it."""

PHONE_REGIONS = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR", "CN", "JP", "AU", "ES", "IT", "NL", "MX")
"""Regions whose national formats count as phone numbers (international +CC numbers match anywhere)."""

# Card prefixes 1-6 (UATP, Amex/Diners/JCB, Visa, Mastercard incl. 2-series, Maestro/Discover/UnionPay),
# 12-19 digits, optional single spaces or dashes between digits. 13 digits starting with 1 are excluded
# (Presidio's rule: those are not issued as cards), and so are digits right after an IBAN's country code and
# check digits ("DE89 3704 ...": an IBAN body, valid or not, is no card).
_CARD = r"(?<![A-Za-z]{2}\d\d[ -])(?<![A-Za-z]{2}\d\d)\b(?!1\d{12}(?!\d))[1-6]\d{3}(?:[ -]?\d){8,15}\b"


@dataclass(frozen=True)
class Finding:
    """One redacted span of the input."""

    entity: str
    start: int
    end: int
    score: float


def _build_analyzer() -> Any:
    import tldextract
    from presidio_analyzer import AnalyzerEngine, Pattern, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    suffixes = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # bundled list: no fetch, no cache dir

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return suffixes(pattern_text).suffix != ""

    class CardRecognizer(CreditCardRecognizer):
        def invalidate_result(self, pattern_text: str) -> bool:
            digits = re.sub(r"\D", "", pattern_text)
            return len(set(digits)) == 1  # 0000 0000 0000 passes Luhn but is no card

    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (
        OfflineEmailRecognizer(),
        PhoneRecognizer(supported_regions=PHONE_REGIONS),
        UsSsnRecognizer(),
        CardRecognizer(patterns=[Pattern("card (12-19 digits)", _CARD, 0.3)]),
        IpRecognizer(),
        IbanRecognizer(),
    ):
        registry.add_recognizer(recognizer)
    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])


def resolve_overlaps(findings: list[Finding]) -> list[Finding]:
    """Keep the strongest of overlapping findings (score, then length), in text order."""
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (-f.score, -(f.end - f.start), f.start)):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


class PiiRedactor:
    """Finds and replaces PII. `load()` is blocking (imports Presidio); `redact()` is thread-safe."""

    name = "pii"

    def __init__(self, *, min_score: float = 0.0, entities: tuple[str, ...] = tuple(PLACEHOLDERS)) -> None:
        unknown = set(entities) - set(PLACEHOLDERS)
        if unknown:
            raise ValueError(f"unsupported PII types {sorted(unknown)}; supported: {sorted(PLACEHOLDERS)}")
        self.min_score = min_score
        self.entities = entities
        self._analyzer: Any = None
        self._anonymizer: Any = None
        self._operators: dict[str, Any] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._analyzer is None:
                from presidio_anonymizer import AnonymizerEngine
                from presidio_anonymizer.entities import OperatorConfig

                self._anonymizer = AnonymizerEngine()
                self._operators = {k: OperatorConfig("replace", {"new_value": v}) for k, v in PLACEHOLDERS.items()}
                self._analyzer = _build_analyzer()

    @property
    def loaded(self) -> bool:
        return self._analyzer is not None

    def find(self, text: str) -> list[Finding]:
        if self._analyzer is None:
            self.load()
        results = self._analyzer.analyze(text=text, language="en", entities=list(self.entities),
                                         score_threshold=self.min_score)
        return resolve_overlaps([Finding(r.entity_type, r.start, r.end, float(r.score)) for r in results])

    def redact(self, text: str) -> tuple[str, list[Finding]]:
        """``text`` with every finding replaced by its placeholder (presidio-anonymizer's ``replace``
        operator), and the findings (offsets in ``text``)."""
        findings = self.find(text)
        if not findings:
            return text, findings
        from presidio_anonymizer.entities import RecognizerResult

        spans = [RecognizerResult(f.entity, f.start, f.end, f.score) for f in findings]
        return self._anonymizer.anonymize(text=text, analyzer_results=spans, operators=self._operators).text, findings

    def describe(self) -> dict[str, Any]:
        return {"engine": "presidio (pattern recognizers, no NLP model)", "entities": list(self.entities),
                "min_score": self.min_score}
