"""Toxicity models behind one protocol, and the chain that picks the first one that loads.

- `TransformersToxicity`: any Hugging Face sequence classifier (default ``unitary/toxic-bert``, multi-label:
  the score is the highest sigmoid over its toxic labels; a single-label model: the softmax mass of its
  toxic labels).
- `ProfanityCheckToxicity`: alt-profanity-check's linear SVM (bundled with the package, always offline);
  the score is its ``predict_prob``.
- `ToxicityChain` *is* a `ToxicityModel` built from an ordered list: `load` tries each in turn and keeps
  the first that loads, so the service is ready offline with the fallback, and `describe` says which one
  runs and why the others did not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

from services.guardrails.classifier import SAFE_TOXICITY_LABEL, SequenceClassifier

log = logging.getLogger(__name__)


@runtime_checkable
class ToxicityModel(Protocol):
    name: str

    def load(self) -> None:
        """Blocking: load weights (called in a loader thread). Raises with a reason when it cannot."""
        ...

    def score(self, text: str) -> float:
        """Probability-like toxicity in [0, 1]. Blocking; call off the event loop."""
        ...

    def describe(self) -> dict[str, Any]: ...


class TransformersToxicity:
    name = "transformers"

    def __init__(self, model: str, *, allow_download: bool = True) -> None:
        self.classifier = SequenceClassifier(model, allow_download=allow_download)
        self.toxic_labels: list[str] = []

    def load(self) -> None:
        self.classifier.load()
        self.toxic_labels = [label for label in self.classifier.labels if not SAFE_TOXICITY_LABEL.match(label)]
        if not self.toxic_labels:
            raise RuntimeError(f"{self.classifier.model} has no toxic label (labels: {self.classifier.labels})")

    def score(self, text: str) -> float:
        probs = self.classifier.probabilities(text)
        toxic = [probs[label] for label in self.toxic_labels]
        return max(toxic) if self.classifier.multi_label else min(1.0, sum(toxic))

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, **self.classifier.describe(), "toxic_labels": self.toxic_labels}


class ProfanityCheckToxicity:
    name = "profanity-check"

    def __init__(self) -> None:
        self._predict_prob: Any = None

    def load(self) -> None:
        from profanity_check import predict_prob

        predict_prob(["warm up"])  # unpickles the bundled model now, not on the first request
        self._predict_prob = predict_prob

    def score(self, text: str) -> float:
        if self._predict_prob is None:
            raise RuntimeError("profanity-check is not loaded")
        return float(self._predict_prob([text])[0])

    def describe(self) -> dict[str, Any]:
        try:
            version = metadata.version("alt-profanity-check")
        except metadata.PackageNotFoundError:
            version = "not installed"
        return {"engine": self.name, "model": f"alt-profanity-check {version} (bundled linear SVM)"}


class ToxicityChain:
    """The first of ``models`` that loads serves every call; the rest are kept for `describe`."""

    name = "toxicity"

    def __init__(self, models: Sequence[ToxicityModel]) -> None:
        if not models:
            raise ValueError("ToxicityChain needs at least one model")
        self.models = list(models)
        self.active: ToxicityModel | None = None
        self.skipped: dict[str, str] = {}

    def load(self) -> None:
        errors = []
        for model in self.models:
            try:
                model.load()
            except Exception as exc:  # next in line; the reason goes to /health/ready
                reason = f"{type(exc).__name__}: {exc}"
                self.skipped[model.name] = reason
                errors.append(f"{model.name}: {reason}")
                log.warning("toxicity model %s unavailable, trying the next: %s", model.name, reason)
                continue
            self.active = model
            return
        raise RuntimeError("no toxicity model could be loaded: " + "; ".join(errors))

    def score(self, text: str) -> float:
        if self.active is None:
            raise RuntimeError("no toxicity model is loaded")
        return self.active.score(text)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = self.active.describe() if self.active else {"engine": None}
        if self.skipped:
            info["fallback_from"] = dict(self.skipped)
        return info


def build_toxicity(model: str, *, allow_download: bool) -> ToxicityChain:
    """TOXICITY_MODEL (when set) first, alt-profanity-check after it."""
    chain: list[ToxicityModel] = []
    if model:
        chain.append(TransformersToxicity(model, allow_download=allow_download))
    chain.append(ProfanityCheckToxicity())
    return ToxicityChain(chain)
