"""Test doubles and random-weight Bark checkpoints for tts-bark's tests and benchmark.

- `FakeSentenceTts` implements `SentenceTts` with knobs (``fail_on_calls``, ``fail_with``, ``delay_s``,
  ``load_error``) and a record of ``calls``. It stands in for Bark only in tests of the fallback logic; tests
  of Bark itself run the real `BarkEngine` on `build_random_bark`'s checkpoint.
- `build_random_bark` saves a random-weight Bark checkpoint laid out like suno's: ``config.json``,
  ``generation_config.json`` (the nested Bark generation config, which round-trips through
  ``BarkModel.from_pretrained``), safetensors weights, a BERT tokenizer built from a small ``vocab.txt``,
  and ``speaker_embeddings_path.json`` with .npy presets that ``BarkProcessor.from_pretrained`` loads as it
  loads suno's. ``size="tiny"`` is for tests (a few MB, ~0.1 s per sentence on CPU); ``size="small"`` has
  suno/bark-small's dimensions (for the benchmark's real-time factor).

Random weights never stop on their own, so the builder makes the semantic model's end-of-sequence token
unreachable (its logit is fixed at ``-hidden_size``): every sentence then makes exactly
``semantic_tokens`` semantic tokens, and the audio length is known in advance (`expected_samples`).
"""

from __future__ import annotations

import asyncio
import json
import math
import string
from pathlib import Path
from typing import Any

import numpy as np

from services.common.audio import AudioSegment
from services.common.errors import EngineFailedError, EngineNotReadyError, InvalidRequestError, ServiceError
from services.tts_bark.engine import STANDARD_BARK_VOICES, Voice, bark_voice_label

# --- a fake engine --------------------------------------------------------------------------------------------


class FakeSentenceTts:
    """`SentenceTts` that says a tone per sentence. Knobs:

    - ``seconds``: audio length per sentence; ``sample_rate_hz``: its rate.
    - ``fail_on_calls``: 1-based call numbers that raise ``fail_with`` (an exception instance or class;
      default `EngineFailedError`).
    - ``delay_s``: awaited before every answer (a slow engine; cancellable, like a timed-out request).
    - ``load_error``: `start` raises RuntimeError(load_error) and the engine stays not ready.

    ``calls`` records (sentence, voice, speed) of every `synthesize`.
    """

    def __init__(self, name: str = "bark", *, voices: tuple[str, ...] = STANDARD_BARK_VOICES, seconds: float = 0.5,
                 sample_rate_hz: int = 24_000, fail_on_calls: tuple[int, ...] = (),
                 fail_with: BaseException | type[BaseException] = EngineFailedError,
                 delay_s: float = 0.0, load_error: str | None = None) -> None:
        self.name = name
        self._voices = voices
        self.seconds = seconds
        self.sample_rate_hz = sample_rate_hz
        self.fail_on_calls = set(fail_on_calls)
        self.fail_with = fail_with
        self.delay_s = delay_s
        self.load_error = load_error
        self.calls: list[tuple[str, str | None, float]] = []
        self._ready = False

    async def start(self) -> None:
        if self.load_error:
            raise RuntimeError(self.load_error)
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    async def aclose(self) -> None:
        self._ready = False

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": "fake", "sample_rate_hz": self.sample_rate_hz}

    def voices(self) -> list[Voice]:
        return [Voice(v, bark_voice_label(v), self.name) for v in self._voices]

    async def synthesize(self, sentence: str, voice: str | None, speed: float = 1.0) -> AudioSegment:
        self.calls.append((sentence, voice, speed))
        if speed != 1.0:
            raise InvalidRequestError("fake engine has no speed control", param="speed")
        if not self._ready:
            raise EngineNotReadyError(f"{self.name} is not ready")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if len(self.calls) in self.fail_on_calls:
            exc = self.fail_with
            if isinstance(exc, type):
                exc = exc(f"{self.name} failed on call {len(self.calls)}") if issubclass(exc, ServiceError) else exc()
            raise exc
        n = int(round(self.seconds * self.sample_rate_hz))
        t = np.arange(n, dtype=np.float32) / self.sample_rate_hz
        return AudioSegment(0.3 * np.sin(2 * math.pi * 220.0 * t), self.sample_rate_hz)


# --- random-weight Bark checkpoints ------------------------------------------------------------------------------

_SIZES: dict[str, dict[str, Any]] = {
    # a few MB: 1 layer, hidden 16, codebooks of 32 entries, short prompts and generation windows
    "tiny": dict(hidden=16, layers=1, heads=2, semantic_vocab=64, codebook=32, block=128, codec_hidden=16,
                 codec_filters=4, codec_lstm=1, max_input_semantic=32, max_coarse_input=32, max_coarse_history=40,
                 sliding_window=16, max_fine_history=32, max_fine_input=64, prompt_semantic=30),
    # suno/bark-small's dimensions (GPT-2-small sized text/coarse/fine models, 24 kHz EnCodec, 1024-entry
    # codebooks) and suno's generation settings; the tokenizer vocabulary is small (it only sizes an
    # embedding table, not the compute)
    "small": dict(hidden=768, layers=12, heads=12, semantic_vocab=10_000, codebook=1024, block=1024, codec_hidden=128,
                  codec_filters=32, codec_lstm=2, max_input_semantic=256, max_coarse_input=256,
                  max_coarse_history=630, sliding_window=60, max_fine_history=512, max_fine_input=1024,
                  prompt_semantic=300),
}

SEMANTIC_RATE_HZ = 49.9
COARSE_RATE_HZ = 75
HOP_LENGTH = 320  # EnCodec 24 kHz: 8 * 5 * 4 * 2 samples per frame


def expected_samples(semantic_tokens: int) -> int:
    """Audio samples (24 kHz) Bark makes from ``semantic_tokens`` semantic tokens (BarkCoarseModel's rule)."""
    ratio = COARSE_RATE_HZ / SEMANTIC_RATE_HZ * 2
    frames = math.floor(semantic_tokens * ratio / 2)
    return frames * HOP_LENGTH


def _tokenizer_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return specials + chars + ["##" + c for c in string.ascii_lowercase + string.digits]


def build_random_bark(directory: Path, *, size: str = "tiny", semantic_tokens: int = 20, seed: int = 0,
                      extra_presets: tuple[str, ...] = ("v2/de_speaker_0",)) -> Path:
    """Save a random-weight Bark checkpoint to ``directory`` (see the module docstring); returns it.

    ``semantic_tokens``: semantic tokens per generate call (``max_new_tokens``), i.e. per sentence
    ``expected_samples(semantic_tokens)`` samples at 24 kHz. The presets are ``v2/en_speaker_0..9`` plus
    ``extra_presets`` (a non-English one by default, which the service must not offer)."""
    import torch
    from transformers import (
        BarkCoarseConfig,
        BarkConfig,
        BarkFineConfig,
        BarkModel,
        BarkSemanticConfig,
        BertTokenizer,
        EncodecConfig,
        GenerationConfig,
    )
    from transformers.models.bark.generation_configuration_bark import (
        BarkCoarseGenerationConfig,
        BarkFineGenerationConfig,
        BarkGenerationConfig,
        BarkSemanticGenerationConfig,
    )

    p = _SIZES[size]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    vocab = _tokenizer_vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)

    # Token id layout as in suno's checkpoints: semantic tokens 0..V-1, EOS/pad V, text ids from
    # text_encoding_offset (= the semantic output vocabulary), then the text pad and infer tokens.
    sem_vocab, codebook, hidden = p["semantic_vocab"], p["codebook"], p["hidden"]
    sem_out = sem_vocab + 48
    text_offset = sem_out
    text_pad = text_offset + len(vocab)
    if size == "small":  # suno's exact ids (BERT multilingual cased: 119547 tokens)
        text_pad, sem_in = 129_595, 129_600
    else:
        sem_in = text_pad + 5
    infer = sem_in - 1
    coarse_vocab = sem_vocab + 2 * codebook + 48 if size == "tiny" else 20_000
    coarse_pad, coarse_infer = sem_vocab + 2 * codebook, sem_vocab + 2 * codebook + 2
    common = dict(block_size=p["block"], num_layers=p["layers"], num_heads=p["heads"], hidden_size=hidden)
    config = BarkConfig(
        semantic_config=BarkSemanticConfig(input_vocab_size=sem_in, output_vocab_size=sem_out, **common).to_dict(),
        coarse_acoustics_config=BarkCoarseConfig(input_vocab_size=coarse_vocab, output_vocab_size=coarse_vocab,
                                                 **common).to_dict(),
        fine_acoustics_config=BarkFineConfig(input_vocab_size=codebook + 32, output_vocab_size=codebook + 32,
                                             n_codes_total=8, n_codes_given=1, **common).to_dict(),
        codec_config=EncodecConfig(hidden_size=p["codec_hidden"], num_filters=p["codec_filters"],
                                   codebook_size=codebook, num_lstm_layers=p["codec_lstm"]).to_dict(),
    )
    torch.manual_seed(seed)
    model = BarkModel(config)
    with torch.no_grad():  # make EOS unreachable: layer-norm output sums to hidden_size, EOS row is -1s
        model.semantic.layernorm_final.bias.fill_(1.0)
        model.semantic.lm_head.weight[sem_vocab].fill_(-1.0)
    generation = BarkGenerationConfig(
        semantic_config=BarkSemanticGenerationConfig(
            eos_token_id=sem_vocab, max_new_tokens=semantic_tokens, text_encoding_offset=text_offset,
            text_pad_token=text_pad, semantic_infer_token=infer, semantic_vocab_size=sem_vocab,
            max_input_semantic_length=p["max_input_semantic"], semantic_rate_hz=SEMANTIC_RATE_HZ).to_dict(),
        coarse_acoustics_config=BarkCoarseGenerationConfig(
            coarse_semantic_pad_token=coarse_pad, coarse_infer_token=coarse_infer, coarse_rate_hz=COARSE_RATE_HZ,
            max_coarse_input_length=p["max_coarse_input"], max_coarse_history=p["max_coarse_history"],
            sliding_window_len=p["sliding_window"]).to_dict(),
        fine_acoustics_config=BarkFineGenerationConfig(
            max_fine_history_length=p["max_fine_history"], max_fine_input_length=p["max_fine_input"]).to_dict(),
        sample_rate=24_000, codebook_size=codebook)
    # BarkGenerationConfig itself cannot be saved (it skips GenerationConfig.__init__); a plain GenerationConfig
    # carrying its dict is what from_pretrained gives back for suno's checkpoints too.
    model.generation_config = GenerationConfig.from_dict(generation.to_dict())
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)

    rng = np.random.default_rng(seed)
    n_sem = p["prompt_semantic"]
    n_coarse = int(n_sem * COARSE_RATE_HZ / SEMANTIC_RATE_HZ)
    embeddings: dict[str, Any] = {"repo_or_path": str(directory)}
    (directory / "speaker_embeddings" / "v2").mkdir(parents=True, exist_ok=True)
    for preset in (*STANDARD_BARK_VOICES, *extra_presets):
        prompts = {
            "semantic_prompt": rng.integers(0, sem_vocab, n_sem),
            "coarse_prompt": rng.integers(0, codebook, (2, n_coarse)),
            "fine_prompt": rng.integers(0, codebook, (8, n_coarse)),
        }
        embeddings[preset] = {}
        for key, array in prompts.items():
            rel = f"speaker_embeddings/{preset}_{key}.npy"
            np.save(directory / rel, array)
            embeddings[preset][key] = rel
    (directory / "speaker_embeddings_path.json").write_text(json.dumps(embeddings, indent=1), encoding="utf-8")
    return directory
