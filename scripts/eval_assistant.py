#!/usr/bin/env python3
"""Does the assistant answer correctly? Spoken-style requests through the real orchestrator on the real LLMs.

    python scripts/eval_assistant.py                              # starts the fleet (offline defaults)
    python scripts/eval_assistant.py --url http://127.0.0.1:8220  # orchestrator-enhanced of a running fleet
    python scripts/eval_assistant.py --only fact,arithmetic --show

The set is ``scripts/data/assistant_eval.jsonl`` (written for this project, CC0): each row has a category,
one or more turns said in one session (the last one is scored; earlier ones set up a follow-up), regular
expressions the answer must match (case-insensitive; all of them) and the tool the request calls for (``null``
when none: facts from the model's own knowledge, small talk, and what the assistant cannot do offline, such
as timers, lights, Discord and web search without their services, where the right answer says plainly that it
cannot).

Each turn is ``POST /mcp/transcript`` (text in, text out: what stt would have heard); figures, not tests:

- **correct**: every expected pattern matches the answer, and what a listener would hear is sound: no sentence
  said twice, no tool-call syntax or JSON read out (``functions.X:``, ``{"message": ...}``), and no tool called
  where the request needs none (a request for what cannot work offline is answered by saying so, not by
  calling a tool that is not configured);
- **repeats**: answers in which a sentence occurs twice or more;
- **tool precision / recall**: of the tools called on scored turns, how many were the expected one; of the
  turns that call for a tool, how many called it;
- **words** per answer and **latency** (the service's own ``timings.total``) p50 / p95.

The fleet this script starts is `make run`'s on free ports (llm-flan is not ready offline: the fallback llm
answers every turn).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval_data import pct  # noqa: E402  (scripts/ is on sys.path when a script runs)

from tests.integration.fleet import orchestrator_url  # noqa: E402

DATA = ROOT / "scripts" / "data" / "assistant_eval.jsonl"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
LEAK = re.compile(r"functions\.\w+|\{\s*\"\w+\"\s*:")
"""Tool-call syntax or JSON in an answer: text a listener should never hear."""


def load(path: Path, only: set[str] | None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if only is None or r["category"] in only]


def repeated_sentence(text: str) -> str | None:
    """The first sentence that occurs twice (normalised), else None."""
    seen: set[str] = set()
    for sentence in SENTENCE_END.split(text):
        key = re.sub(r"\W+", " ", sentence).strip().lower()
        if len(key) < 8:
            continue
        if key in seen:
            return sentence.strip()
        seen.add(key)
    return None


def score(row: dict, answer: dict) -> dict:
    text = answer.get("response") or ""
    called = [c["name"] for c in answer.get("tool_calls") or []]
    repeat = repeated_sentence(text)
    faults = [name for name, bad in (
        ("empty", not text.strip()),
        ("expected content missing", not all(re.search(p, text, re.I) for p in row["expect"])),
        ("repeated sentence", repeat is not None),
        ("tool syntax read out", LEAK.search(text) is not None),
        ("tool called where none is needed", row.get("tool") is None and bool(called)),
    ) if bad]
    return {
        "id": row["id"], "category": row["category"], "text": text, "called": called,
        "correct": not faults, "faults": faults,
        "repeat": repeat,
        "tool": row.get("tool"),
        "words": len(text.split()),
        "ms": (answer.get("timings") or {}).get("total"),
        "engine": answer.get("llm_engine"),
        "status": answer.get("_status", 200),
    }


def ask(client: httpx.Client, url: str, row: dict) -> dict:
    session = f"eval-{row['id']}-{uuid.uuid4().hex[:8]}"
    answer: dict = {}
    for turn in row["turns"]:
        r = client.post(f"{url}/mcp/transcript", json={"transcript": turn, "session_id": session}, timeout=300)
        answer = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != 200:
            answer = {"response": "", "_status": r.status_code, "error": r.text[:200]}
    return answer


def report(results: list[dict]) -> None:
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_cat[r["category"]].append(r)
    print(f"\n{'category':12s} {'correct':>9s} {'repeats':>8s} {'words p50':>9s} {'ms p50':>8s} {'ms p95':>8s}")
    for cat, rs in list(by_cat.items()) + [("ALL", results)]:
        ms = [r["ms"] for r in rs if r["ms"] is not None]
        print(f"{cat:12s} {sum(r['correct'] for r in rs):3d}/{len(rs):<3d}  "
              f"{sum(bool(r['repeat']) for r in rs):8d} {statistics.median([r['words'] for r in rs]):9.0f} "
              f"{pct(ms, .5):8.0f} {pct(ms, .95):8.0f}")
    called = [(r["tool"], name) for r in results for name in set(r["called"])]
    wanted = [r for r in results if r["tool"]]
    precision = sum(t == n for t, n in called) / len(called) if called else float("nan")
    recall = sum(r["tool"] in r["called"] for r in wanted) / len(wanted) if wanted else float("nan")
    print(f"\ntools: {len(called)} called on scored turns, precision {precision:.2f}; "
          f"{len(wanted)} turns call for one, recall {recall:.2f}")
    engines: dict[str, int] = defaultdict(int)
    for r in results:
        engines[str(r["engine"])] += 1
    print(f"llm engine per turn: {dict(engines)}; non-200 answers: {sum(r['status'] != 200 for r in results)}")
    faults: dict[str, int] = defaultdict(int)
    for r in results:
        for f in r["faults"]:
            faults[f] += 1
    print(f"faults (answers with each): {dict(faults)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="orchestrator-enhanced of a running fleet (default: start one)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--only", help="comma-separated categories")
    ap.add_argument("--show", action="store_true", help="print every answer")
    ap.add_argument("--json", type=Path, help="write the per-request results here")
    args = ap.parse_args()
    rows = load(args.data, set(args.only.split(",")) if args.only else None)
    results = []
    with orchestrator_url(args.url, "eval-assistant-") as url, httpx.Client() as client:
        for row in rows:
            res = score(row, ask(client, url, row))
            results.append(res)
            if args.show:
                mark = "ok " if res["correct"] else "BAD"
                print(f"{mark} {row['id']:22s} tools={res['called']} {res['ms'] or 0:6.0f} ms  "
                      f"{res['text'][:160]!r}" + (f"  [{'; '.join(res['faults'])}]" if res["faults"] else ""),
                      flush=True)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def rescore(path: Path, data: Path = DATA) -> list[dict]:
    """Score saved answers again (``--json`` output) after the rules change, without asking the fleet."""
    rows = {r["id"]: r for r in load(data, None)}
    return [score(rows[r["id"]], {"response": r["text"], "tool_calls": [{"name": n} for n in r["called"]],
                                  "timings": {"total": r["ms"]}, "llm_engine": r["engine"]}) for r in
            json.loads(path.read_text())]


if __name__ == "__main__":
    main()
