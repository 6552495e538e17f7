"""A tiny random-weight T5 saved as a model directory, loaded by llm-flan through its real loading code.

No FLAN-T5 weights can be downloaded here, so tests build one: ``T5Config`` (FLAN-T5's architecture: gated-GELU,
untied output scaling) at toy size with ``ByT5Tokenizer`` (bytes as tokens, no vocabulary file to fetch).
The output rows of non-printable bytes are zeroed so greedy answers are readable letters; the weights are
otherwise random, so answers are gibberish but deterministic.
"""

from __future__ import annotations

import string
from pathlib import Path


def build_tiny_t5(directory: Path, *, seed: int = 0, d_model: int = 32) -> Path:
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = ByT5Tokenizer(extra_ids=0)  # ids: 0 pad, 1 eos, 2 unk, 3.. bytes
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_ff=2 * d_model, num_layers=2,
                      num_decoder_layers=2, num_heads=2, d_kv=d_model // 2, feed_forward_proj="gated-gelu",
                      tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    with torch.no_grad():
        weight = model.lm_head.weight
        weight.normal_(0.0, 0.3)
        keep = torch.zeros(len(tokenizer), dtype=torch.bool)
        for ch in string.ascii_lowercase + " .,?":
            keep[3 + ord(ch)] = True
        keep[1] = True  # eos stays possible
        weight[~keep] = 0.0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
