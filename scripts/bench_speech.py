#!/usr/bin/env python3
"""Speech benchmark: service real-time factor vs the same engine called in this process, and the tts time
to first audio byte with streaming. Prints a markdown report; exit code 0.

    .venv/bin/python scripts/bench_speech.py                       # both services in-process (real HTTP)
    .venv/bin/python scripts/bench_speech.py --repeats 5
    .venv/bin/python scripts/bench_speech.py --stt-url http://127.0.0.1:9000 --tts-url http://127.0.0.1:7000

"direct" is `WhisperEngine` / `PiperEngine` (what the services wrap) called in this process on the
decoded audio / the text; "service" is the wall time of the HTTP request over loopback (multipart upload,
decode, queue, thread hop, JSON / WAV out). Calls run one at a time, direct and service alternating
(A/B, B/A) so drift cancels; of --repeats rounds the one with the median overhead is reported.
Overhead = service time / direct time - 1 (goal: <= 5 %). Piper runs with noise_scale = noise_w = 0,
so both sides produce bit-identical audio of the same length.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common.audio import decode_audio  # noqa: E402
from services.common.testing import serve_in_thread  # noqa: E402
from services.stt import app as stt_app  # noqa: E402
from services.stt import engine as stt_engine  # noqa: E402
from services.stt.settings import Settings as SttSettings  # noqa: E402
from services.tts import app as tts_app  # noqa: E402
from services.tts import engine as tts_engine  # noqa: E402
from services.tts.settings import Settings as TtsSettings  # noqa: E402

TTS_TEXTS = [
    "Good morning. The weather today is mild, with a light breeze from the west.",
    "Your meeting with the design team starts in fifteen minutes, in room four.",
    "I have added milk, eggs and two loaves of bread to the shopping list.",
    "The train to Edinburgh leaves at half past nine. Platform three. It is on time.",
    "Reminder: water the plants on the balcony before you leave for the weekend.",
    "The package was delivered at noon and left with your neighbour across the street.",
    "Turn left at the next junction, then continue straight for about two kilometres.",
    "Sorry, I did not catch that. Could you say it again, a little more slowly?",
]
TTFB_TEXT = "The kettle is on. Dinner is at seven tonight. Please bring the blue umbrella."
DETERMINISTIC = {"noise_scale": 0.0, "noise_w": 0.0}


def p(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def wait_ready(client: httpx.Client, base: str, timeout_s: float = 180.0) -> None:
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            if client.get(f"{base}/health/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > give_up:
            raise SystemExit(f"{base}/health/ready did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.2)


def median_round(rounds: list[dict]) -> dict:
    return sorted(rounds, key=lambda r: r["overhead"])[(len(rounds) - 1) // 2]


def bench_stt(client: httpx.Client, base: str, engine, clips: list[tuple[str, bytes]], repeats: int) -> dict:
    decoded = [decode_audio(data) for _, data in clips]
    t0 = time.perf_counter()
    for _ in range(5):
        for _, data in clips:
            decode_audio(data)
    decode_s = (time.perf_counter() - t0) / 5  # one decode of every clip (the service decodes twice)

    def direct(i: int) -> tuple[float, str]:
        t = time.perf_counter()
        text = engine.transcribe(stt_engine.TranscriptionRequest(audio=decoded[i])).text
        return time.perf_counter() - t, text

    def service(i: int) -> tuple[float, str, float]:
        name, data = clips[i]
        t = time.perf_counter()
        r = client.post(f"{base}/transcribe", files={"file": (name, data, "audio/wav")})
        dt = time.perf_counter() - t
        r.raise_for_status()
        body = r.json()
        return dt, body["text"], body["processing_time"]

    direct(0), service(0)  # warm-up both paths
    rounds = []
    for rep in range(repeats):
        d, s, proc, mismatched = [], [], [], 0
        for i in range(len(clips)):
            if (i + rep) % 2 == 0:
                (dt, dtext), (st, stext, pt) = direct(i), service(i)
            else:
                (st, stext, pt), (dt, dtext) = service(i), direct(i)
            d.append(dt), s.append(st), proc.append(pt)
            mismatched += dtext != stext
        rounds.append({"direct": d, "service": s, "proc": proc, "mismatched": mismatched,
                       "overhead": sum(s) / sum(d) - 1})
    audio_s = sum(seg.duration_s for seg in decoded)
    return {"rounds": rounds, "audio_s": audio_s, "decode_s": decode_s}


def bench_tts(client: httpx.Client, base: str, engine, repeats: int) -> dict:
    def direct(text: str) -> tuple[float, int]:
        t = time.perf_counter()
        n = sum(len(a) for a in engine.synthesize_sentences(tts_engine.SynthesisRequest(text=text, **DETERMINISTIC)))
        return time.perf_counter() - t, n

    def service(text: str) -> tuple[float, int]:
        t = time.perf_counter()
        r = client.post(f"{base}/synthesize", json={"text": text, **DETERMINISTIC})  # streamed WAV, read whole
        dt = time.perf_counter() - t
        r.raise_for_status()
        return dt, (len(r.content) - 44) // 2

    direct(TTS_TEXTS[0]), service(TTS_TEXTS[0])
    rounds = []
    for rep in range(repeats):
        d, s, mismatched, frames = [], [], 0, 0
        for i, text in enumerate(TTS_TEXTS):
            if (i + rep) % 2 == 0:
                (dt, dn), (st, sn) = direct(text), service(text)
            else:
                (st, sn), (dt, dn) = service(text), direct(text)
            d.append(dt), s.append(st)
            mismatched += dn != sn
            frames += dn
        rounds.append({"direct": d, "service": s, "mismatched": mismatched, "frames": frames,
                       "overhead": sum(s) / sum(d) - 1})
    return {"rounds": rounds, "rate": engine.sample_rate_for(None)}


def bench_ttfb(client: httpx.Client, base: str, engine, n: int) -> dict:
    out: dict[str, list[float]] = {"d_first": [], "d_all": [], "s_first": [], "s_all": []}
    req = tts_engine.SynthesisRequest(text=TTFB_TEXT, **DETERMINISTIC)
    body = {"text": TTFB_TEXT, "format": "pcm", **DETERMINISTIC}  # raw PCM: every body byte is audio
    for i in range(n + 1):  # the first one is a warm-up
        t = time.perf_counter()
        it = engine.synthesize_sentences(req)
        next(it)
        d_first = time.perf_counter() - t
        for _ in it:
            pass
        d_all = time.perf_counter() - t
        t = time.perf_counter()
        s_first = None
        with client.stream("POST", f"{base}/synthesize", json=body) as r:
            r.raise_for_status()
            for chunk in r.iter_raw():
                if chunk and s_first is None:
                    s_first = time.perf_counter() - t
        s_all = time.perf_counter() - t
        if i:
            for key, v in zip(out, (d_first, d_all, s_first, s_all)):
                out[key].append(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the RTF benchmarks (default 3)")
    ap.add_argument("--clips", type=int, default=10, help="stt clips, spread over the eval set (default 10)")
    ap.add_argument("--ttfb-runs", type=int, default=10, help="streamed requests for time to first byte")
    ap.add_argument("--stt-url", help="benchmark this running stt service instead of an in-process one")
    ap.add_argument("--tts-url", help="benchmark this running tts service instead of an in-process one")
    ap.add_argument("--eval-dir", type=Path, default=ROOT.parent / "shared" / "eval" / "A")
    args = ap.parse_args(argv)

    files = sorted((args.eval_dir / "clean").glob("*.wav"))
    if not files:
        raise SystemExit(f"no WAV files in {args.eval_dir / 'clean'}")
    step = max(1, len(files) // args.clips)
    clips = [(f.name, f.read_bytes()) for f in files[::step][: args.clips]]

    stt_settings, tts_settings = SttSettings(), TtsSettings()
    started = time.perf_counter()
    stt_direct, tts_direct = stt_engine.WhisperEngine(stt_settings), tts_engine.PiperEngine(tts_settings)
    asyncio.run(stt_direct.start())
    asyncio.run(tts_direct.start())
    token = stt_settings.secret_token() or tts_settings.secret_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with ExitStack() as stack, httpx.Client(timeout=120, headers=headers) as client:
        stt_url = args.stt_url or stack.enter_context(serve_in_thread(stt_app.create_app(stt_settings)))
        tts_url = args.tts_url or stack.enter_context(serve_in_thread(tts_app.create_app(tts_settings)))
        stt_url, tts_url = stt_url.rstrip("/"), tts_url.rstrip("/")
        wait_ready(client, stt_url), wait_ready(client, tts_url)
        stt = bench_stt(client, stt_url, stt_direct, clips, args.repeats)
        tts = bench_tts(client, tts_url, tts_direct, args.repeats)
        ttfb = bench_ttfb(client, tts_url, tts_direct, args.ttfb_runs)
    elapsed = time.perf_counter() - started

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    print("# Speech benchmark: service vs direct engine\n")
    print(f"- machine: {cpu}; {len(os.sched_getaffinity(0))} usable CPUs (os.cpu_count {os.cpu_count()}); "
          f"{platform.platform()}; Python {platform.python_version()}")
    print(f"- stt: faster-whisper {version('faster-whisper')} / ctranslate2 {version('ctranslate2')}, model "
          f"{stt_direct.model_name} on {stt_direct.device}/{stt_direct.compute_type}, beam "
          f"{stt_settings.stt_beam_size}, vad {stt_settings.stt_vad_filter}, cpu_threads "
          f"{stt_settings.stt_cpu_threads or 'default'}; service {args.stt_url or 'in-process ' + stt_url}")
    print(f"- tts: piper-tts {version('piper-tts')} / onnxruntime {version('onnxruntime')}, voice "
          f"{tts_direct.default_voice} ({tts['rate']} Hz), noise_scale=noise_w=0; service "
          f"{args.tts_url or 'in-process ' + tts_url}")
    print(f"- rounds: {args.repeats} (reported: the median-overhead round); total run {elapsed:.0f} s\n")

    print("## Real-time factor (processing time / audio time; lower is faster)\n")
    print("| benchmark | audio | direct RTF | service RTF | overhead | p50 direct | p50 service | p50 extra/call |"
          " overhead per round | outputs differ |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = [("stt /transcribe", stt["rounds"], stt["audio_s"], f"{len(clips)} clips"),
            ("tts /synthesize", tts["rounds"], tts["rounds"][0]["frames"] / tts["rate"], f"{len(TTS_TEXTS)} texts")]
    for name, rounds, audio_s, what in rows:
        r = median_round(rounds)
        extra = [s - d for s, d in zip(r["service"], r["direct"])]
        per_round = ", ".join(f"{x['overhead'] * 100:+.1f}%" for x in rounds)
        print(f"| {name} | {what}, {audio_s:.1f} s | {sum(r['direct']) / audio_s:.3f} | "
              f"{sum(r['service']) / audio_s:.3f} | **{r['overhead'] * 100:+.1f} %** | {ms(p(r['direct'], 50))} | "
              f"{ms(p(r['service'], 50))} | {ms(p(extra, 50))} | {per_round} | {r['mismatched']} |")
    r = median_round(stt["rounds"])
    in_engine = sum(r["proc"])
    print(f"\nstt split of the median round: service wall {sum(r['service']):.3f} s = engine time reported by "
          f"the service {in_engine:.3f} s + {sum(r['service']) - in_engine:.3f} s outside the engine (HTTP, "
          f"multipart, 2x decode_audio, queue, thread hop, JSON); direct engine {sum(r['direct']):.3f} s. "
          f"One decode_audio of all {len(clips)} clips: {ms(stt['decode_s'])}.")
    print("Goal: overhead <= 5 %: stt " + ("met" if r["overhead"] <= 0.05 else "NOT met") + ", tts "
          + ("met" if median_round(tts["rounds"])["overhead"] <= 0.05 else "NOT met") + ".\n")

    print(f"## tts time to first audio byte, streaming ({args.ttfb_runs} runs, format=pcm)\n")
    print(f"Text (3 sentences): \"{TTFB_TEXT}\"\n")
    print("| path | first audio p50 | first audio p95 | complete p50 | complete p95 | first / complete (p50) |")
    print("|---|---|---|---|---|---|")
    for label, first, whole in (("direct: first sentence from synthesize_sentences", ttfb["d_first"], ttfb["d_all"]),
                                ("service: first PCM byte over HTTP", ttfb["s_first"], ttfb["s_all"])):
        print(f"| {label} | {ms(p(first, 50))} | {ms(p(first, 95))} | {ms(p(whole, 50))} | {ms(p(whole, 95))} | "
              f"{p(first, 50) / p(whole, 50):.2f} |")
    print(f"\nService first byte - direct first sentence (p50): {ms(p(ttfb['s_first'], 50) - p(ttfb['d_first'], 50))}.")
    print("\nReproduce: `.venv/bin/python scripts/bench_speech.py` (in-process services), or `make run` then "
          "`.venv/bin/python scripts/bench_speech.py --stt-url http://127.0.0.1:9000 --tts-url http://127.0.0.1:7000`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
