"""Seq2seq backends of llm-flan behind one small protocol: transformers (PyTorch) and CTranslate2.

A backend generates for a batch of rows at once and reports every new token of every row to a callback as
soon as it exists; the callback answers whether that row is finished (EOS, stop sequence, its own token cap,
client gone), so rows of one batch may end at different steps. It also scores candidate answers (sum of
token log-probabilities), which the tool-choice logic uses for forced choices.

Everything here blocks: the batcher calls it from its single worker thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.common.hub import ModelNotFoundError, is_local_path, resolve_model_dir

log = logging.getLogger(__name__)

OnToken = Callable[[int, int], bool]
"""``on_token(row, token_id) -> finished``: called once per generated token of an unfinished row."""

HF_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt")
"""Files of a hub snapshot that loading needs (config, weights, sentencepiece/tokenizer): no .bin/.h5/.msgpack
duplicates of the weights."""


@dataclass(frozen=True)
class Sampling:
    """Decoding settings shared by every row of one generate call."""

    temperature: float  # 0 = greedy
    top_p: float
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Seq2SeqBackend(Protocol):
    name: str
    device: str
    eos_id: int
    supports_seed: bool
    """Whether ``Sampling.seed`` makes sampling reproducible (else requests with a seed are refused)."""

    def load(self) -> None: ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with the end-of-sequence id, never truncated."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def generate(self, inputs: list[list[int]], sampling: Sampling, max_new_tokens: int, on_token: OnToken) -> None:
        ...

    def score(self, source: list[int], candidates: list[list[int]]) -> list[float]:
        """Sum of log-probabilities of each candidate (token ids ending with EOS) as the answer to ``source``."""
        ...

    def describe(self) -> dict[str, Any]: ...


def resolve_source(model: str, allow_download: bool) -> Path:
    """The model's directory: a local dir as it is, a hub id from the cache or downloaded."""
    return resolve_model_dir(model, allow_download=allow_download, allow_patterns=HF_PATTERNS)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pick_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if _cuda_available() else "cpu"
    if setting == "cuda" and not _cuda_available():
        raise RuntimeError("FLAN_T5_DEVICE=cuda but no CUDA device is visible to torch")
    return setting


class _TokenizerMixin:
    tokenizer: Any

    def _load_tokenizer(self, directory: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise RuntimeError(f"the tokenizer in {directory} has no end-of-sequence token")
        self.eos_id = int(eos)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


class TransformersBackend(_TokenizerMixin):
    """``AutoModelForSeq2SeqLM`` on CPU (fp32) or CUDA (fp16)."""

    name = "transformers"
    supports_seed = True

    def __init__(self, model: str, *, device: str = "auto", cpu_threads: int = 0, allow_download: bool = True):
        self.model_spec = model
        self.device_setting = device
        self.device = "cpu"
        self.cpu_threads = cpu_threads
        self.allow_download = allow_download
        self.model: Any = None
        self.eos_id = -1
        self.source: Path | None = None

    def load(self) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM

        self.device = pick_device(self.device_setting)
        if self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
        self.source = resolve_source(self.model_spec, self.allow_download)
        self._load_tokenizer(self.source)
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        model = AutoModelForSeq2SeqLM.from_pretrained(self.source, dtype=dtype)
        if not model.config.is_encoder_decoder:
            raise RuntimeError(f"{self.model_spec} is not an encoder-decoder (seq2seq) model")
        self.model = model.to(self.device).eval()

    def generate(self, inputs: list[list[int]], sampling: Sampling, max_new_tokens: int, on_token: OnToken) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        rows = len(inputs)
        finished = [False] * rows
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        class Router(BaseStreamer):
            def __init__(self) -> None:
                self.first = True

            def put(self, value: Any) -> None:
                if self.first:  # the decoder start tokens, not generated text
                    self.first = False
                    return
                for row, token in enumerate(value.reshape(-1).tolist()):
                    if not finished[row]:
                        finished[row] = bool(on_token(row, int(token)))

            def end(self) -> None:
                pass

        class RowsDone(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.tensor(finished, dtype=torch.bool, device=input_ids.device)

        width = max(len(x) for x in inputs)
        ids = torch.full((rows, width), pad, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        for r, x in enumerate(inputs):  # right padding: T5's relative positions need no left alignment
            ids[r, : len(x)] = torch.tensor(x)
            mask[r, : len(x)] = 1
        kwargs: dict[str, Any] = {"do_sample": not sampling.greedy}
        if not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=max_new_tokens,
                min_new_tokens=0, num_beams=1, streamer=Router(), stopping_criteria=StoppingCriteriaList([RowsDone()]),
                eos_token_id=self.eos_id, pad_token_id=pad, **kwargs,
            )

    def score(self, source: list[int], candidates: list[list[int]]) -> list[float]:
        import torch

        width = max(len(c) for c in candidates)
        labels = torch.full((len(candidates), width), -100, dtype=torch.long)
        for r, c in enumerate(candidates):
            labels[r, : len(c)] = torch.tensor(c)
        src = torch.tensor([source] * len(candidates), device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=src, labels=labels.to(self.device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        gathered = logp.gather(-1, labels.clamp(min=0).to(self.device).unsqueeze(-1)).squeeze(-1)
        gathered = gathered.masked_fill(labels.to(self.device) == -100, 0.0)
        return gathered.sum(dim=-1).tolist()

    def describe(self) -> dict[str, Any]:
        dtype = str(getattr(self.model, "dtype", "")).replace("torch.", "") if self.model is not None else None
        return {"backend": self.name, "device": self.device, "dtype": dtype}


def default_ct2_dir(model: str, compute_type: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = Path(model).expanduser().resolve().name if is_local_path(model) else model.replace("/", "--")
    return cache / "audio-orchestrator" / "ct2" / f"{name}-{compute_type}"


def _fix_t5_output_scale() -> None:
    """CTranslate2's T5 loader scales decoder outputs by d_model^-0.5 when ``config.tie_word_embeddings``, the
    transformers-4 marker of original T5. transformers 5 forces that flag to True for every T5 and keeps the real
    switch in ``config.scale_decoder_outputs`` (False for T5 v1.1 / FLAN-T5), so without this the converted
    FLAN-T5's logits would be sqrt(d_model) times too flat: greedy output unchanged, sampling and scores wrong."""
    from ctranslate2.converters import transformers as ct2_transformers
    from ctranslate2.specs import model_spec

    loader = ct2_transformers._MODEL_LOADERS.get("T5Config")
    if loader is None or getattr(loader, "_audio_orchestrator_fixed", False):
        return
    original = loader.get_model_spec

    def get_model_spec(model: Any) -> Any:
        spec = original(model)
        if getattr(model.config, "scale_decoder_outputs", None) is False:
            spec.decoder.scale_outputs = model_spec.OPTIONAL
        return spec

    loader.get_model_spec = get_model_spec
    loader._audio_orchestrator_fixed = True


def convert_to_ct2(source: Path, target: Path, compute_type: str) -> Path:
    """Convert a transformers seq2seq model dir for CTranslate2 (weights quantised to ``compute_type``) and
    save its tokenizer beside it, so ``target`` is self-contained. Written to a temp dir, then renamed."""
    import shutil

    from ctranslate2.converters import TransformersConverter
    from transformers import AutoTokenizer

    quantization = {"int8_float16": "int8_float16", "int8_float32": "int8_float32"}.get(compute_type, compute_type)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to CTranslate2 (%s) in %s", source, quantization, target)
    _fix_t5_output_scale()
    TransformersConverter(str(source)).convert(str(tmp), quantization=quantization, force=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


class CTranslate2Backend(_TokenizerMixin):
    """CTranslate2 ``Translator`` (int8 on CPU by default). Converts the model on first load."""

    name = "ctranslate2"
    supports_seed = False
    """``ctranslate2.set_random_seed`` seeds the calling thread's generator, not the translator's worker threads,
    so a per-request seed cannot be honoured."""

    def __init__(self, model: str, *, device: str = "auto", compute_type: str = "auto", ct2_dir: Path | None = None,
                 cpu_threads: int = 0, allow_download: bool = True):
        self.model_spec = model
        self.device_setting = device
        self.device = "cpu"
        self.compute_type_setting = compute_type
        self.compute_type = compute_type
        self.ct2_dir = ct2_dir
        self.cpu_threads = cpu_threads
        self.allow_download = allow_download
        self.translator: Any = None
        self.eos_id = -1
        self.directory: Path | None = None

    def load(self) -> None:
        import ctranslate2

        if self.device_setting == "auto":
            self.device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        else:
            self.device = self.device_setting
        if self.compute_type_setting == "auto":
            self.compute_type = "int8_float16" if self.device == "cuda" else "int8"
        target = Path(self.ct2_dir).expanduser() if self.ct2_dir else default_ct2_dir(self.model_spec,
                                                                                        self.compute_type)
        if not (target / "model.bin").is_file():
            try:
                source = resolve_source(self.model_spec, self.allow_download)
            except ModelNotFoundError as exc:
                raise ModelNotFoundError(f"no CTranslate2 model in {target} and {exc}") from exc
            convert_to_ct2(source, target, self.compute_type)
        self.directory = target
        self._load_tokenizer(target)
        self.translator = ctranslate2.Translator(str(target), device=self.device, compute_type=self.compute_type,
                                                 intra_threads=self.cpu_threads)

    def _tokens(self, ids: Sequence[int]) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(list(ids))

    def generate(self, inputs: list[list[int]], sampling: Sampling, max_new_tokens: int, on_token: OnToken) -> None:
        finished = [False] * len(inputs)

        def callback(step: Any) -> bool:
            row = step.batch_id
            if not finished[row]:
                finished[row] = bool(on_token(row, int(step.token_id)))
            return finished[row]

        self.translator.translate_batch(
            [self._tokens(x) for x in inputs], beam_size=1, max_decoding_length=max_new_tokens,
            max_input_length=0, return_end_token=True,
            sampling_topk=1 if sampling.greedy else 0,
            sampling_topp=1.0 if sampling.greedy else sampling.top_p,
            sampling_temperature=1.0 if sampling.greedy else sampling.temperature,
            callback=callback,
        )

    def score(self, source: list[int], candidates: list[list[int]]) -> list[float]:
        # score_batch scores the target tokens and the end token it appends itself
        targets = [self._tokens(c[:-1] if c and c[-1] == self.eos_id else c) for c in candidates]
        results = self.translator.score_batch([self._tokens(source)] * len(candidates), targets, max_input_length=0)
        return [float(sum(r.log_probs)) for r in results]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "compute_type": self.compute_type,
                "ct2_dir": str(self.directory) if self.directory else None}


def build_backend(settings: Any) -> Seq2SeqBackend:
    model = settings.model_id()
    if settings.flan_t5_backend == "ctranslate2":
        return CTranslate2Backend(model, device=settings.flan_t5_device,
                                  compute_type=settings.flan_t5_ct2_compute_type, ct2_dir=settings.flan_t5_ct2_dir,
                                  cpu_threads=settings.flan_t5_cpu_threads,
                                  allow_download=settings.flan_t5_allow_download)
    return TransformersBackend(model, device=settings.flan_t5_device, cpu_threads=settings.flan_t5_cpu_threads,
                               allow_download=settings.flan_t5_allow_download)
