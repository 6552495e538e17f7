"""The scanner contract and the scanners, built from settings by name.

Every scanner is ``scan(text) -> ScanResult(sanitized, valid, risk)`` (blocking; the pipeline runs it off
the event loop). Scanners that need weights also have ``start()``/``ready()`` and are app components. A
pipeline runs its scanners in order and hands each one the previous one's ``sanitized`` text, so
everything after ``normalize`` sees the cleaned text.

To add a scanner: write a class with ``name`` and ``scan``, and register a builder in `BUILDERS`; the
settings' scanner lists (GUARDRAILS_INPUT_SCANNERS / GUARDRAILS_OUTPUT_SCANNERS) then accept its name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from services.common.inference import load_in_thread
from services.guardrails import patterns as rules
from services.guardrails.classifier import INJECTION_LABEL, SequenceClassifier
from services.guardrails.normalize import clean, matching_view
from services.guardrails.pii import PiiRedactor
from services.guardrails.settings import Settings
from services.guardrails.toxicity import ToxicityChain, ToxicityModel, build_toxicity

BlockReason = Literal["injection", "jailbreak", "toxicity"]


@dataclass(frozen=True)
class ScanResult:
    sanitized: str
    """The text for the next scanner and for the answer (cleaned or redacted; else the input itself)."""
    valid: bool
    """False when this scanner judges the text unsafe."""
    risk: float
    """0 (no sign of risk) .. 1 (certain)."""
    reason: BlockReason | None = None
    """Why it is not valid (a closed set, also the metric label)."""
    details: tuple[str, ...] = ()
    """What fired: rule names, model labels or PII types (never text)."""


@runtime_checkable
class Scanner(Protocol):
    name: str

    def scan(self, text: str) -> ScanResult: ...


@runtime_checkable
class ModelScanner(Scanner, Protocol):
    """A scanner with weights: a component of the app (loaded in the lifespan, ready flag for /health/ready)."""

    async def start(self) -> None: ...

    def ready(self) -> bool: ...

    async def aclose(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


# --- text ---------------------------------------------------------------------------------------------------


class NormalizeScanner:
    """Unicode NFKC, invisible characters removed, spaces tidied. Never blocks."""

    name = "normalize"

    def scan(self, text: str) -> ScanResult:
        return ScanResult(clean(text), True, 0.0)


class PatternScanner:
    """Injection/jailbreak phrasing rules (`services.guardrails.patterns`) on the normalised matching view."""

    name = "patterns"

    def __init__(self, threshold: float = 0.5, rule_set: tuple[rules.Rule, ...] = rules.RULES) -> None:
        self.threshold = threshold
        self.rules = rule_set

    def matches(self, text: str) -> list[tuple[str, str, float]]:
        """(name, reason, weight) of every rule and obfuscation signal that fires."""
        view, obf = matching_view(text)
        found = [(r.name, r.reason, r.weight) for r in self.rules if r.pattern.search(view)]
        if obf.tags:
            found.append(("tag_smuggling", "injection", rules.TAG_SMUGGLING_WEIGHT))
        if obf.spaced_letters >= 8:
            found.append(("spaced_letters", "injection", rules.SPACED_OBFUSCATION_WEIGHT))
        if obf.invisible_in_words:
            found.append(("word_splitting", "injection", rules.WORD_SPLITTING_WEIGHT))
        return found

    def scan(self, text: str) -> ScanResult:
        found = self.matches(text)
        risk = 1.0 - math.prod(1.0 - w for _n, _r, w in found)
        valid = risk < self.threshold
        reason = None if valid else max(found, key=lambda f: f[2])[1]
        return ScanResult(text, valid, round(risk, 4), reason, tuple(n for n, _r, _w in found))


# --- model-backed ------------------------------------------------------------------------------------------------


class _Loadable:
    """start/ready/aclose for a scanner with weights: ``load()`` (blocking) loads them, ``start()`` runs it
    in a loader thread. Subclasses implement ``_load_weights()``."""

    _loaded = False
    _error: str | None = None

    def _load_weights(self) -> None:
        raise NotImplementedError

    def load(self) -> None:
        try:
            self._load_weights()
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            raise
        self._loaded = True

    async def start(self) -> None:
        await load_in_thread(self.load)

    def ready(self) -> bool:
        return self._loaded

    async def aclose(self) -> None:
        return None

    def _status(self) -> str:
        return "ready" if self._loaded else (f"failed to load: {self._error}" if self._error else "loading")


class ClassifierScanner(_Loadable):
    """A sequence classifier (PROMPT_INJECTION_MODEL); risk is the probability of its injection labels."""

    name = "classifier"

    def __init__(self, model: str, *, threshold: float = 0.9, allow_download: bool = True) -> None:
        self.classifier = SequenceClassifier(model, allow_download=allow_download)
        self.threshold = threshold
        self.risk_labels: list[str] = []

    def _load_weights(self) -> None:
        self.classifier.load()
        labels = self.classifier.labels
        self.risk_labels = [label for label in labels if INJECTION_LABEL.search(label)]
        if not self.risk_labels or len(self.risk_labels) == len(labels):
            raise RuntimeError(f"cannot tell the injection label of {self.classifier.model} among {labels}: "
                               "one label must be named like INJECTION, JAILBREAK, UNSAFE or LABEL_1")

    def scan(self, text: str) -> ScanResult:
        probs = self.classifier.probabilities(text)
        risky = {label: probs[label] for label in self.risk_labels}
        risk = max(risky.values()) if self.classifier.multi_label else min(1.0, sum(risky.values()))
        valid = risk < self.threshold
        top = max(risky, key=risky.__getitem__)
        return ScanResult(text, valid, round(risk, 4), None if valid else "injection", () if valid else (top,))

    def describe(self) -> dict[str, Any]:
        return {"status": self._status(), "threshold": self.threshold, "risk_labels": self.risk_labels,
                **self.classifier.describe()}


class ToxicityScanner(_Loadable):
    """Toxicity through the model chain (TOXICITY_MODEL, else alt-profanity-check). Input and output
    pipelines share one instance (one model in memory)."""

    name = "toxicity"

    def __init__(self, model: ToxicityModel, *, threshold: float = 0.7) -> None:
        self.model = model
        self.threshold = threshold

    def _load_weights(self) -> None:
        self.model.load()

    def scan(self, text: str) -> ScanResult:
        risk = self.model.score(text)
        valid = risk < self.threshold
        return ScanResult(text, valid, round(risk, 4), None if valid else "toxicity")

    def describe(self) -> dict[str, Any]:
        return {"status": self._status(), "threshold": self.threshold, **self.model.describe()}


class PiiScanner(_Loadable):
    """Replaces PII with typed placeholders. Never blocks: the redacted text is the answer."""

    name = "pii"

    def __init__(self, redactor: PiiRedactor) -> None:
        self.redactor = redactor

    def _load_weights(self) -> None:
        self.redactor.load()

    def scan(self, text: str) -> ScanResult:
        redacted, findings = self.redactor.redact(text)
        risk = max((f.score for f in findings), default=0.0)
        return ScanResult(redacted, True, round(risk, 4), None, tuple(f.entity for f in findings))

    def describe(self) -> dict[str, Any]:
        return {"status": self._status(), **self.redactor.describe()}


# --- building from settings -----------------------------------------------------------------------------------


@dataclass
class Shared:
    """Scanner instances both pipelines use (one toxicity model in memory)."""

    settings: Settings
    cache: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


def _toxicity(shared: Shared) -> ToxicityScanner:
    s = shared.settings

    def make() -> ToxicityScanner:
        chain: ToxicityChain = build_toxicity(s.toxicity_model or "", allow_download=s.guardrails_allow_download)
        return ToxicityScanner(chain, threshold=s.toxicity_threshold)

    return shared.get("toxicity", make)


def _classifier(shared: Shared) -> ClassifierScanner | None:
    s = shared.settings
    if not s.prompt_injection_model:
        return None  # listed but not configured: PROMPT_INJECTION_MODEL empty is the offline default
    return ClassifierScanner(s.prompt_injection_model, threshold=s.prompt_injection_threshold,
                             allow_download=s.guardrails_allow_download)


BUILDERS: dict[str, Callable[[Shared], Scanner | None]] = {
    "normalize": lambda shared: NormalizeScanner(),
    "patterns": lambda shared: PatternScanner(shared.settings.guardrails_pattern_threshold),
    "classifier": _classifier,
    "toxicity": _toxicity,
    "pii": lambda shared: PiiScanner(PiiRedactor(min_score=shared.settings.guardrails_pii_min_score)),
}
"""Scanner name -> builder; a builder may return None (configured off)."""


def build_scanners(names: tuple[str, ...], shared: Shared) -> list[Scanner]:
    out = []
    for name in names:
        scanner = BUILDERS[name](shared)
        if scanner is not None:
            out.append(scanner)
    return out
