"""Voice-to-first-audio and full-turn latency of orchestrator-enhanced, with where the time goes.

    python scripts/bench_voice.py                       # starts the fleet (offline defaults) on free ports
    python scripts/bench_voice.py --url http://127.0.0.1:8220   # a fleet that is already running
    python scripts/bench_voice.py --utterances 20 --concurrency 1,5,20

Each turn POSTs one recording from ../shared/eval/A to ``/v1/voice/turn/stream`` (Server-Sent Events) and
measures, on the client:

- **first audio**: from sending the (complete) utterance to receiving the first ``audio`` event — what a user
  hears as the assistant's reaction time after they stop speaking;
- **full turn**: to the ``done`` event.

The ``done`` event carries the service's own stage timings (ms): preprocess, stt, guard_input, memory, agent
(the whole LLM answer), first_text (first LLM token, since the turn started), guard_output, tts (summed over
sentences), first_audio; their medians are printed as the breakdown.

The utterances are the ``--utterances`` clean recordings of ../shared/eval/A closest to 3 s long. At concurrency
C, C sessions run at once, each taking utterances in turn until every level has made ``max(utterances, C)``
turns. The fleet this script starts is `make run`'s with offline defaults (llm-flan has no weights offline:
the fallback llm answers; tts-bark has no Bark weights: Piper speaks through it) and a rate limit high enough
not to interfere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval_data import pct, require_eval_data  # noqa: E402  (scripts/ is on sys.path when a script runs)

from tests.integration.fleet import orchestrator_url, wait_prompt_warmed  # noqa: E402

EVAL_A = ROOT.parent / "shared" / "eval" / "A"
STAGES = ("preprocess", "stt", "guard_input", "memory", "first_text", "agent", "guard_output", "tts", "first_audio",
          "total")


def pick_utterances(n: int, target_s: float = 3.0) -> list[Path]:
    """The ``n`` clean recordings of eval/A whose duration is closest to ``target_s``."""
    require_eval_data(EVAL_A / "manifest.json")
    manifest = json.loads((EVAL_A / "manifest.json").read_text())
    clean = sorted((abs(float(item["dur"]) - target_s), item["file"]) for item in manifest
                   if str(item["file"]).startswith("clean/"))
    chosen = [EVAL_A / name for _, name in clean[:n]]
    require_eval_data(*chosen)
    return chosen


def one_turn(url: str, wav: Path, session: str) -> dict:
    t0 = time.perf_counter()
    first_audio = None
    done = None
    error = None
    with httpx.stream("POST", f"{url}/v1/voice/turn/stream", timeout=300,
                      files={"file": (wav.name, wav.read_bytes(), "audio/wav")},
                      data={"session_id": session}) as r:
        if r.status_code != 200:
            r.read()
            return {"status": r.status_code, "error": r.text[:200]}
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                if name == "audio" and first_audio is None:
                    first_audio = time.perf_counter() - t0
                elif name == "done":
                    done = json.loads(line[6:])
                elif name == "error":
                    error = line[6:300]
    total = time.perf_counter() - t0
    return {"status": 200, "first_audio_s": first_audio, "total_s": total, "done": done, "error": error}


def run_level(url: str, wavs: list[Path], concurrency: int) -> list[dict]:
    turns = max(len(wavs), concurrency)
    counter = iter(range(turns))
    lock = threading.Lock()
    results: list[dict] = []

    def worker(w: int) -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            res = one_turn(url, wavs[i % len(wavs)], f"bench-c{concurrency}-w{w}")
            res["utterance"] = wavs[i % len(wavs)].name
            with lock:
                results.append(res)

    with ThreadPoolExecutor(concurrency) as pool:
        for w in range(concurrency):
            pool.submit(worker, w)
    return results


def report(level: int, results: list[dict]) -> None:
    ok = [r for r in results if r["status"] == 200 and r.get("done") and not r.get("error")]
    fa = [r["first_audio_s"] * 1000 for r in ok if r["first_audio_s"] is not None]
    tot = [r["total_s"] * 1000 for r in ok]
    print(f"\n== concurrency {level}: {len(ok)}/{len(results)} turns ok"
          + (f", failures: {[(r['status'], r.get('error')) for r in results if r not in ok][:3]}"
             if len(ok) < len(results) else ""))
    print(f"   voice-to-first-audio  p50 {pct(fa, .5):7.0f} ms   p95 {pct(fa, .95):7.0f} ms")
    print(f"   full turn             p50 {pct(tot, .5):7.0f} ms   p95 {pct(tot, .95):7.0f} ms")
    engines = {}
    for r in ok:
        key = (r["done"].get("llm_engine"), r["done"].get("tts_service") or "-")
        engines[key] = engines.get(key, 0) + 1
    print(f"   llm engine per turn: {engines}")
    print("   service stage medians (ms; first_text/first_audio are since the turn started):")
    for stage in STAGES:
        vals = [r["done"]["timings"][stage] for r in ok if stage in r["done"]["timings"]]
        if vals:
            print(f"     {stage:13s} p50 {statistics.median(vals):7.0f}   p95 {pct(vals, .95):7.0f}   (n={len(vals)})")
    if ok:
        words = [len((r["done"].get("response") or "").split()) for r in ok]
        print(f"   answer length: median {statistics.median(words):.0f} words")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="orchestrator-enhanced of a running fleet (default: start one)")
    ap.add_argument("--utterances", type=int, default=20)
    ap.add_argument("--concurrency", default="1,5,20")
    ap.add_argument("--warmup", type=int, default=2, help="turns before measuring (model caches, connections)")
    args = ap.parse_args()
    wavs = pick_utterances(args.utterances)
    if not wavs:
        sys.exit(f"no utterances found in {EVAL_A}")
    durs = [sf.info(str(w)).duration for w in wavs]
    print(f"{len(wavs)} utterances from {EVAL_A}: {min(durs):.1f}-{max(durs):.1f} s, "
          f"median {statistics.median(durs):.1f} s; CPUs: {os.cpu_count()}")
    with orchestrator_url(args.url, "bench-voice-") as url:
        t = time.perf_counter()
        wait_prompt_warmed(url, timeout_s=600)  # the agent's prompt evaluated once on llm, as before a user's turn
        print(f"prompt warmed up on llm in {time.perf_counter() - t:.0f} s")
        for i in range(args.warmup):
            one_turn(url, wavs[i % len(wavs)], "bench-warmup")
        for level in [int(c) for c in args.concurrency.split(",")]:
            report(level, run_level(url, wavs, level))


if __name__ == "__main__":
    main()
