#!/usr/bin/env python3
"""tts-bark benchmark: Bark's real-time factor on CPU (direct engine vs through the service) with a
random-weight checkpoint of suno/bark-small's size, and the fallback switch time (time to audio when Bark is
not ready / raises / times out, against Piper direct). Prints a markdown report; exit code 0.

    .venv/bin/python scripts/bench_tts_bark.py                          # ~5 min on 2 CPU cores
    .venv/bin/python scripts/bench_tts_bark.py --sentences 3 --semantic-tokens 250
    .venv/bin/python scripts/bench_tts_bark.py --model-dir /tmp/bark-small-random   # build once, reuse
    .venv/bin/python scripts/bench_tts_bark.py --skip-rtf                # fallback switch times only (~1 min)

Real-time factor. No Bark weights can be downloaded here, so the script builds a random-weight checkpoint
with suno/bark-small's dimensions (`services.tts_bark.testing.build_random_bark(size="small")`: 12-layer,
768-wide text/coarse/fine GPT models, 24 kHz EnCodec, suno's generation settings; ~1.7 GB). Compute per
token is that of bark-small; what differs is the stopping rule: random weights never emit end-of-sequence,
so the builder removes it and every sentence makes exactly ``--semantic-tokens`` semantic tokens (150 =
3.0 s of audio at 49.9 Hz), i.e. the audio length is fixed instead of following the text. "direct" is
`BarkEngine.synthesize` in this process; "service" is ``POST /synthesize`` to ``python -m services.tts_bark``
in its own process (``BARK_SENTENCE_TIMEOUT_S=600`` so no sentence falls back). Calls alternate (D,S then S,D).

Fallback switch time. The tts (Piper) service runs as its own process; tts-bark runs in this process with
Bark replaced as needed: the real `BarkEngine` on a missing checkpoint (not ready), `FakeSentenceTts` that
raises on every call, and one that never answers (``BARK_SENTENCE_TIMEOUT_S=--timeout``). Each request is one
sentence, non-streamed JSON; the time is until the whole answer (base64 WAV) has arrived. "switch overhead" is
its p50 minus the p50 of the same sentence from Piper directly (and minus the timeout, for the timeout row).

Caveats: other processes on the machine add noise (the load average is printed); torch uses one thread per
core unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.tts_bark.app import create_app  # noqa: E402
from services.tts_bark.engine import BarkEngine  # noqa: E402
from services.tts_bark.settings import Settings  # noqa: E402
from services.tts_bark.testing import FakeSentenceTts, build_random_bark, expected_samples  # noqa: E402

TEXTS = [
    "Good morning, the weather today is mild with a light breeze from the west.",
    "Your meeting with the design team starts in fifteen minutes, in room four.",
    "I have added milk, eggs and two loaves of bread to the shopping list.",
    "The train to Edinburgh leaves at half past nine from platform three.",
    "Reminder: water the plants on the balcony before you leave for the weekend.",
]
SWITCH_TEXT = "The kettle is on and dinner is at seven."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(stack: ExitStack, package: str, env: dict[str, str]) -> str:
    """Start ``python -m services.<package>`` as its own process on a free port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", f"services.{package}"], cwd=ROOT,
                            env={**os.environ, "PORT": str(port), "LOG_LEVEL": "WARNING", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(lambda: (proc.terminate(), proc.wait(10)))
    return f"http://127.0.0.1:{port}"


def wait_until(client: httpx.Client, url: str, ok, timeout_s: float = 300.0) -> None:
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            r = client.get(url, timeout=5)
            if ok(r):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > give_up:
            raise SystemExit(f"{url} not ready within {timeout_s:.0f} s")
        time.sleep(0.2)


def bark_ready(r: httpx.Response) -> bool:
    return r.status_code == 200 and r.json()["components"]["tts-bark"]["bark"]["ready"]


def p(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


# --- real-time factor -------------------------------------------------------------------------------------------


def bench_rtf(client: httpx.Client, model_dir: Path, tts_url: str, args, stack: ExitStack) -> dict:
    settings = Settings(_env_file=None, bark_model=str(model_dir), bark_cpu_threads=args.threads,
                        bark_sentence_timeout_s=600)
    engine = BarkEngine(settings)
    t = time.perf_counter()
    asyncio.run(engine.start())
    direct_load = time.perf_counter() - t
    service = spawn(stack, "tts_bark", {"BARK_MODEL": str(model_dir), "PIPER_FALLBACK_URL": tts_url,
                                        "BARK_CPU_THREADS": str(args.threads), "BARK_SENTENCE_TIMEOUT_S": "600",
                                        "REQUEST_TIMEOUT_S": "3600"})
    wait_until(client, f"{service}/health/ready", bark_ready)
    texts = [TEXTS[i % len(TEXTS)] for i in range(args.sentences)]
    out: dict = {"direct": [], "service": [], "audio_s": [], "service_audio_s": [], "engines": [], "direct_load_s": direct_load,
                 "describe": engine.describe()}

    def direct(text: str) -> tuple[float, float]:
        t0 = time.perf_counter()
        audio = asyncio.run(engine.synthesize(text, None))
        return time.perf_counter() - t0, audio.duration_s

    def via_service(text: str) -> tuple[float, float, str]:
        t0 = time.perf_counter()
        r = client.post(f"{service}/synthesize", json={"text": text}, timeout=3600)
        dt = time.perf_counter() - t0
        r.raise_for_status()
        return dt, r.json()["duration_s"], r.json()["engine"]

    for i, text in enumerate(texts):
        if i % 2 == 0:
            (d, audio_s), (s, s_audio, eng) = direct(text), via_service(text)
        else:
            (s, s_audio, eng), (d, audio_s) = via_service(text), direct(text)
        out["direct"].append(d), out["service"].append(s), out["audio_s"].append(audio_s)
        out["service_audio_s"].append(s_audio), out["engines"].append(eng)
        print(f"  sentence {i}: {audio_s:.2f} s audio, direct {d:.1f} s, service {s:.1f} s ({eng})", file=sys.stderr)
    asyncio.run(engine.aclose())  # drops the model before the next part of the run
    gc.collect()
    return out


# --- fallback switch time ------------------------------------------------------------------------------------


@contextmanager
def serve_together(apps: list) -> Iterator[list[str]]:
    """Serve several apps with uvicorn on ONE event loop in a background thread (so they share the process's
    pooled HTTP client, as one service would); yields their base URLs."""
    import uvicorn

    socks, servers = [], []
    for app in apps:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
        servers.append(uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                     timeout_graceful_shutdown=1)))

    async def run_all() -> None:
        await asyncio.gather(*(srv.serve(sockets=[sock]) for srv, sock in zip(servers, socks)))

    thread = threading.Thread(target=asyncio.run, args=(run_all(),), daemon=True)
    thread.start()
    try:
        give_up = time.monotonic() + 30
        while not all(srv.started for srv in servers):
            if time.monotonic() > give_up:
                raise SystemExit("the tts-bark apps did not start")
            time.sleep(0.01)
        yield [f"http://127.0.0.1:{sock.getsockname()[1]}" for sock in socks]
    finally:
        for srv in servers:
            srv.should_exit = True
        thread.join(10)
        for sock in socks:
            sock.close()


def bench_switch(client: httpx.Client, tts_url: str, args) -> dict[str, list[float]]:
    """Every scenario served at once; requests go round-robin in a shuffled order per round (drift cancels)."""

    def timed(url: str, body: dict, expect_engine: str | None) -> float:
        t0 = time.perf_counter()
        r = client.post(url, json=body, timeout=120)
        dt = time.perf_counter() - t0
        r.raise_for_status()
        if expect_engine and r.headers.get("x-tts-engine") != expect_engine:
            raise SystemExit(f"{url}: expected engine {expect_engine}, got {r.headers.get('x-tts-engine')}")
        return dt

    base = dict(_env_file=None, piper_fallback_url=tts_url, dependency_poll_s=0.5)
    with tempfile.TemporaryDirectory() as missing:
        scenarios = [
            ("tts-bark, Piper voice (no fallback)", Settings(**base, bark_model=f"{missing}/none"), None,
             {"voice": "en_US-joe-medium"}),
            ("Bark not ready (no checkpoint)", Settings(**base, bark_model=f"{missing}/none"), None, {}),
            ("Bark raises", Settings(**base), FakeSentenceTts(fail_on_calls=tuple(range(1, 10_000))), {}),
            (f"Bark times out ({args.timeout:g} s)", Settings(**base, bark_sentence_timeout_s=args.timeout),
             FakeSentenceTts(delay_s=3600), {}),
        ]
        apps = [create_app(settings, bark=bark) for _, settings, bark, _ in scenarios]
        with serve_together(apps) as urls:
            for url in urls:
                wait_until(client, f"{url}/health/ready", lambda r: r.status_code == 200
                           and "error" in r.json()["components"]["tts-bark"]["bark"]
                           or r.json()["components"]["tts-bark"]["bark"]["ready"])
            calls = [("Piper direct (tts service)", f"{tts_url}/synthesize",
                      {"text": SWITCH_TEXT, "stream": False, "format": "wav"}, None)]
            calls += [(label, f"{url}/synthesize", {"text": SWITCH_TEXT, **extra}, "piper")
                      for (label, _, _, extra), url in zip(scenarios, urls)]
            results: dict[str, list[float]] = {label: [] for label, *_ in calls}
            order = list(range(len(calls)))
            rng = random.Random(0)
            for rep in range(args.fallback_runs + 1):  # round 0 is a warm-up
                rng.shuffle(order)
                for i in order:
                    label, url, body, engine = calls[i]
                    dt = timed(url, body, engine)
                    if rep:
                        results[label].append(dt)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=2, help="sentences for the RTF (each direct and via service)")
    ap.add_argument("--semantic-tokens", type=int, default=150,
                    help="semantic tokens per sentence (49.9 per second of audio; default 150 = 3.0 s)")
    ap.add_argument("--threads", type=int, default=0, help="BARK_CPU_THREADS (0 = torch default: one per core)")
    ap.add_argument("--model-dir", type=Path, help="keep the random bark-small-sized checkpoint here (built "
                                                   "when missing, reused otherwise); default: a temporary dir")
    ap.add_argument("--fallback-runs", type=int, default=10, help="requests per fallback scenario")
    ap.add_argument("--timeout", type=float, default=1.0, help="BARK_SENTENCE_TIMEOUT_S of the timeout scenario")
    ap.add_argument("--skip-rtf", action="store_true", help="only the fallback switch times")
    args = ap.parse_args(argv)
    logging.getLogger("services").setLevel(logging.ERROR)  # every fallback logs a warning; keep the report clean
    import torch

    default_threads = torch.get_num_threads()  # before BARK_CPU_THREADS changes it for this process

    started = time.perf_counter()
    with ExitStack() as stack, httpx.Client(timeout=60) as client:
        tts_url = spawn(stack, "tts", {})
        wait_until(client, f"{tts_url}/health/ready", lambda r: r.status_code == 200)
        rtf = None
        if not args.skip_rtf:
            model_dir = args.model_dir
            if model_dir is None:
                model_dir = Path(tempfile.mkdtemp(prefix="bark-small-random-"))
                stack.callback(shutil.rmtree, model_dir, True)
            build_s = None
            if not (model_dir / "config.json").exists():
                t = time.perf_counter()
                build_random_bark(model_dir, size="small", semantic_tokens=args.semantic_tokens)
                build_s = time.perf_counter() - t
            size_gb = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 1e9
            rtf = bench_rtf(client, model_dir, tts_url, args, stack)
            rtf.update(build_s=build_s, size_gb=size_gb, model_dir=model_dir)
        switch = bench_switch(client, tts_url, args)
    elapsed = time.perf_counter() - started

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    print("# tts-bark benchmark\n")
    print(f"- machine: {cpu}; {len(os.sched_getaffinity(0))} usable CPUs; load average at the end "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; {platform.platform()}; Python "
          f"{platform.python_version()}")
    print(f"- torch {version('torch')} ({default_threads} threads by default), transformers "
          f"{version('transformers')}, piper-tts {version('piper-tts')}; total run {elapsed:.0f} s\n")
    if rtf is not None:
        audio, s_audio = sum(rtf["audio_s"]), sum(rtf["service_audio_s"])
        d, s = sum(rtf["direct"]), sum(rtf["service"])
        built = f"built in {rtf['build_s']:.0f} s" if rtf["build_s"] is not None else "reused"
        info = rtf["describe"]
        print("## Bark real-time factor on CPU (random weights, suno/bark-small dimensions)\n")
        print(f"- checkpoint: {rtf['size_gb']:.2f} GB on disk ({built}; {rtf['model_dir']}); loaded in "
              f"{rtf['direct_load_s']:.1f} s; {info['device']}/{info['dtype']}, {info['attn_implementation']} "
              f"attention, BARK_CPU_THREADS={args.threads or 'default'}")
        tokens = info["max_semantic_tokens"]
        print(f"- {args.sentences} sentences of {tokens} semantic tokens = "
              f"{expected_samples(tokens) / 24000:.2f} s of audio each; engines in the service's "
              f"answers: {', '.join(sorted(set(rtf['engines'])))}\n")
        print("| path | audio | processing | RTF | per sentence p50 |")
        print("|---|---|---|---|---|")
        print(f"| direct `BarkEngine.synthesize` | {audio:.1f} s | {d:.1f} s | **{d / audio:.1f}** | "
              f"{p(rtf['direct'], 50):.1f} s |")
        print(f"| service `POST /synthesize` | {s_audio:.1f} s | {s:.1f} s | **{s / s_audio:.1f}** | "
              f"{p(rtf['service'], 50):.1f} s |")
        print(f"\nService overhead: {(s / d - 1) * 100:+.1f} % ({s - d:+.1f} s over {args.sentences} sentences).\n")
    print(f"## Fallback switch time ({args.fallback_runs} requests each, one sentence: \"{SWITCH_TEXT}\")\n")
    print("| path | time to audio p50 | p90 | switch overhead vs Piper direct (p50) |")
    print("|---|---|---|---|")
    piper = p(switch["Piper direct (tts service)"], 50)
    for label, times in switch.items():
        extra = p(times, 50) - piper - (args.timeout if label.startswith("Bark times out") else 0.0)
        cell = "-" if label.startswith("Piper direct") else f"{ms(extra)}" + (
            f" (after the {args.timeout:g} s timeout)" if label.startswith("Bark times out") else "")
        print(f"| {label} | {ms(p(times, 50))} | {ms(p(times, 90))} | {cell} |")
    print("\nReproduce: `.venv/bin/python scripts/bench_tts_bark.py` (add `--model-dir DIR` to keep the checkpoint).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
