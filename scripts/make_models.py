#!/usr/bin/env python3
"""`make models`: prepare model files ahead of the first start, from the services' own settings.

- llm-flan with FLAN_T5_BACKEND=ctranslate2 (or ``--ct2``): resolve FLAN_T5_MODEL_SIZE (hub cache, or a download
  when allowed) and convert it to CTranslate2 into FLAN_T5_CT2_DIR (default ~/.cache/audio-orchestrator/ct2/...),
  exactly as the service would on its first load. With the transformers backend: make sure the model is in the
  Hugging Face cache (downloading it with progress when allowed).

    python scripts/make_models.py            # what the current environment / .env.service files configure
    python scripts/make_models.py --ct2      # also build the CTranslate2 conversion
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.llm_flan.backends import CTranslate2Backend, resolve_source  # noqa: E402
from services.llm_flan.settings import Settings  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct2", action="store_true", help="build the CTranslate2 conversion whatever FLAN_T5_BACKEND says")
    args = p.parse_args()
    settings = Settings()
    model = settings.model_id()
    t0 = time.perf_counter()
    try:
        source = resolve_source(model, settings.flan_t5_allow_download)
        print(f"llm-flan: {model} -> {source}")
        if args.ct2 or settings.flan_t5_backend == "ctranslate2":
            backend = CTranslate2Backend(model, device=settings.flan_t5_device,
                                         compute_type=settings.flan_t5_ct2_compute_type,
                                         ct2_dir=settings.flan_t5_ct2_dir, allow_download=settings.flan_t5_allow_download)
            backend.load()
            print(f"llm-flan: CTranslate2 ({backend.compute_type}) in {backend.directory}")
    except Exception as exc:  # offline without the weights: say so, do not pretend
        print(f"llm-flan: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
