"""A tiny random-weight BERT sequence classifier saved as a model directory, loaded by guardrails through its
real loading code (`SequenceClassifier.load` -> `resolve_model_dir` -> AutoTokenizer/AutoModel...).

No Hugging Face model can be downloaded here, so tests (and scripts/bench_guardrails.py) build one: a
WordPiece vocabulary of letters, digits and punctuation written to vocab.txt (no file to fetch), BERT at toy
size, labels as the caller names them. Random weights: only the mechanics can be asserted (scores in [0, 1],
threshold respected, labels mapped), never quality.
"""

from __future__ import annotations

import string
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_bert(directory: Path, labels: list[str], *, multi_label: bool = False, seed: int = 0,
                    hidden: int = 32, layers: int = 2) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pieces = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = SPECIALS + pieces + ["##" + p for p in string.ascii_lowercase + string.digits]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(directory / "vocab.txt"), do_lower_case=True)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=512, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
                        problem_type="multi_label_classification" if multi_label else "single_label_classification")
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # spread the logits so scores differ between texts
        model.classifier.weight.normal_(0.0, 2.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
