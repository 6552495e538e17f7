#!/usr/bin/env python3
"""Word error rate of the stt service on ../shared/eval/A (clean and noisy sets), printed as a table.

    python scripts/eval_stt.py                      # starts stt in-process with its default settings
    python scripts/eval_stt.py --url http://127.0.0.1:9000   # a running service (make run)
    STT_BEAM_SIZE=1 python scripts/eval_stt.py      # any stt setting, from the environment

Text on both sides is normalised (lower case, punctuation dropped, whitespace collapsed) before jiwer
computes WER; the corpora write references in different styles (see ../shared/eval/A/SOURCES.md).
WER is pooled over the words of a set, not averaged over files. This is an evaluation, not a test.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import jiwer  # noqa: E402
from eval_data import require_eval_data  # noqa: E402  (scripts/ is on sys.path when a script runs)

DEFAULT_EVAL = ROOT.parent / "shared" / "eval" / "A"


def normalise(text: str) -> str:
    text = text.lower().replace("’", "'")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(w.strip("'") for w in text.split() if w.strip("'"))


def corpus_of(name: str) -> str:
    return Path(name).name.split("_")[0]  # vbd, ps, arctic, ls, lj, whisper


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="base URL of a running stt service (default: start one in-process)")
    p.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL)
    p.add_argument("--show-errors", action="store_true", help="print each file whose WER is above 0")
    args = p.parse_args()

    require_eval_data(args.eval_dir / "transcripts.tsv", option="--eval-dir")
    rows = list(csv.DictReader((args.eval_dir / "transcripts.tsv").open(), delimiter="\t"))
    require_eval_data(*(args.eval_dir / row["filename"] for row in rows), option="--eval-dir")
    with ExitStack() as stack:
        url = args.url
        model = "(remote)"
        if not url:
            from services.common.testing import serve_in_thread
            from services.stt.app import create_app
            from services.stt.settings import Settings

            settings = Settings()
            model = f"{settings.stt_model} beam={settings.stt_beam_size} vad={settings.stt_vad_filter}"
            url = stack.enter_context(serve_in_thread(create_app(settings)))
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            print(f"stt at {url} never became ready", file=sys.stderr)
            return 1

        refs: dict[str, list[str]] = defaultdict(list)
        hyps: dict[str, list[str]] = defaultdict(list)
        audio_s: dict[str, float] = defaultdict(float)
        proc_s: dict[str, float] = defaultdict(float)
        with httpx.Client(base_url=url, timeout=120) as client:
            for row in rows:
                path = args.eval_dir / row["filename"]
                split = row["filename"].split("/")[0]  # clean | noisy
                r = client.post("/transcribe", files={"file": (path.name, path.read_bytes(), "audio/wav")},
                                data={"language": "en"})
                r.raise_for_status()
                body = r.json()
                ref, hyp = normalise(row["reference"]), normalise(body["text"])
                for key in (split, f"{split}/{corpus_of(row['filename'])}"):
                    refs[key].append(ref)
                    hyps[key].append(hyp)
                    audio_s[key] += body["duration"]
                    proc_s[key] += body["processing_time"]
                if args.show_errors and ref != hyp:
                    print(f"  {row['filename']}: WER {jiwer.wer(ref, hyp):.2f}\n    ref: {ref}\n    hyp: {hyp}")

    print(f"\nstt WER on {args.eval_dir} (model: {model}; {url})\n")
    print(f"| set | files | audio s | WER | RTF (engine) |\n|---|---|---|---|---|")
    for key in sorted(refs, key=lambda k: (k.split("/")[0], "/" in k, k)):
        wer = jiwer.wer(refs[key], hyps[key])
        label = f"**{key}**" if "/" not in key else f"  {key}"
        print(f"| {label} | {len(refs[key])} | {audio_s[key]:.1f} | {wer:.3f} | {proc_s[key] / audio_s[key]:.3f} |")
    print("\nDigits and spelled-out numbers are not unified: 'in 1813' against 'in eighteen thirteen' counts as\n"
          "errors (most of clean/lj's WER). --show-errors lists every file that differs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
