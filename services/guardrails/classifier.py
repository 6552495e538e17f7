"""A Hugging Face sequence-classification model as label probabilities, for the prompt-injection classifier
and the transformers toxicity model.

The model is a hub id (from the cache, downloaded only when allowed) or a local directory, found through
`services.common.hub.resolve_model_dir`, so offline it fails fast with a reason. Multi-label models
(``problem_type == "multi_label_classification"``, e.g. unitary/toxic-bert) give a sigmoid per label;
single-label ones a softmax over labels.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from services.common.hub import resolve_model_dir

HF_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors", "pytorch_model.bin", "tokenizer*", "vocab*",
               "merges.txt", "spm.model", "sentencepiece*")
"""The files a classifier needs (no other frameworks' weights, no ONNX exports)."""

INJECTION_LABEL = re.compile(r"inject|jailbreak|unsafe|malicious|attack|harmful|^label_1$|^1$", re.I)
"""Labels that mean "risk" for the prompt-injection classifier; every other label is benign."""

SAFE_TOXICITY_LABEL = re.compile(r"^(?:non[-_ ]?toxic|not[-_ ]?toxic|neutral|normal|safe|ok|clean|benign|none|"
                                 r"neither|label_0|0)$", re.I)
"""Labels that mean "not toxic" for a toxicity classifier; every other label counts as toxic."""


class SequenceClassifier:
    """Loads once (`load`, blocking), then maps a text to ``{label: probability}`` (`probabilities`)."""

    def __init__(self, model: str, *, allow_download: bool = True, max_length: int = 512) -> None:
        self.model = model
        self.allow_download = allow_download
        self.max_length = max_length
        self.directory: Path | None = None
        self.labels: list[str] = []
        self.multi_label = False
        self._tokenizer: Any = None
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        directory = resolve_model_dir(self.model, allow_download=self.allow_download, allow_patterns=HF_PATTERNS)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForSequenceClassification.from_pretrained(directory)
        model.eval()
        config = model.config
        self.labels = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
        self.multi_label = config.problem_type == "multi_label_classification"
        self.directory = directory
        self._tokenizer, self._model = tokenizer, model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def probabilities(self, text: str) -> dict[str, float]:
        import torch

        if self._model is None:
            raise RuntimeError(f"{self.model} is not loaded")
        inputs = self._tokenizer(text, truncation=True, max_length=self.max_length, return_tensors="pt")
        with self._lock, torch.inference_mode():
            logits = self._model(**inputs).logits[0].float()
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        return {label: float(p) for label, p in zip(self.labels, probs.tolist())}

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "labels": self.labels,
                "activation": "sigmoid" if self.multi_label else "softmax"}
