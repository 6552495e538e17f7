#!/usr/bin/env python3
"""Speech benchmark: service real-time factor vs the same engine called in this process, and the tts time
to first audio byte with streaming. Prints a markdown report; exit code 0.

    .venv/bin/python scripts/bench_speech.py                       # starts both services, each its own process
    .venv/bin/python scripts/bench_speech.py --repeats 5
    .venv/bin/python scripts/bench_speech.py --stt-url http://127.0.0.1:9000 --tts-url http://127.0.0.1:7000

"direct" is `WhisperEngine` / `PiperEngine` (what the services wrap) called in this process on the
decoded audio / the text; "service" is the wall time of the HTTP request over loopback (multipart upload,
decode, queue, thread hop, JSON / WAV out). Calls run one at a time, direct and service alternating
(A/B, B/A) so drift cancels; of --repeats rounds the one with the median overhead is reported.
Overhead = service time / direct time - 1 (goal: <= 5 %). Piper runs with noise_scale = noise_w = 0,
so both sides produce bit-identical audio of the same length.

Caveats. (1) The services run as their own processes, as in `make run`: two CTranslate2 models in one
process oversubscribe libgomp's threads on 2 CPUs and slow both (tens of %), which would distort the
comparison. For the same reason the services load weights in a thread that exits
(`services.common.inference.load_in_thread`). (2) Other processes on the machine add noise of several %
per round: read the per-round and pooled figures too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval_data import require_eval_data  # noqa: E402  (scripts/ is on sys.path when a script runs)

from services.common.audio import decode_audio  # noqa: E402
from services.stt import engine as stt_engine  # noqa: E402
from services.stt.settings import Settings as SttSettings  # noqa: E402
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


def spawn(stack: ExitStack, package: str) -> str:
    """Start ``python -m services.<package>`` as its own process on a free port (as `make run` does)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", f"services.{package}"], cwd=ROOT,
                            env={**os.environ, "PORT": str(port), "LOG_LEVEL": "WARNING",
                                 "ENABLE_PREPROCESSING": "false"},  # stt alone, as the direct engine
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(lambda: (proc.terminate(), proc.wait(10)))
    return f"http://127.0.0.1:{port}"


def http_floor(client: httpx.Client, base: str, n: int = 20) -> float:
    """p50 of GET /health/live: what HTTP over loopback costs with no work behind it."""
    def once() -> float:
        t = time.perf_counter()
        client.get(f"{base}/health/live").raise_for_status()
        return time.perf_counter() - t

    return p([once() for _ in range(n + 1)][1:], 50)


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


def stt_alone(engine, decoded: list) -> float:
    """Best of 2 passes (after a warm-up) of the direct engine over the clips, before any service starts."""
    times = []
    for _ in range(3):
        t = time.perf_counter()
        for seg in decoded:
            engine.transcribe(stt_engine.TranscriptionRequest(audio=seg))
        times.append(time.perf_counter() - t)
    return min(times[1:])


def ab_rounds(n: int, direct, service, repeats: int) -> list[dict]:
    """``direct(i)`` / ``service(i)`` -> (seconds, output, engine seconds or None), called one at a time in
    alternating order (A/B on even items, B/A on odd, shifted each round) after one warm-up call each."""
    direct(0), service(0)
    rounds = []
    for rep in range(repeats):
        r: dict = {"direct": [], "service": [], "engine": [], "out": [], "mismatched": 0}
        for i in range(n):
            if (i + rep) % 2 == 0:
                (dt, dout, _), (st, sout, eng) = direct(i), service(i)
            else:
                (st, sout, eng), (dt, dout, _) = service(i), direct(i)
            r["direct"].append(dt), r["service"].append(st), r["engine"].append(eng), r["out"].append(dout)
            r["mismatched"] += dout != sout
        r["overhead"] = sum(r["service"]) / sum(r["direct"]) - 1
        rounds.append(r)
    return rounds


def bench_stt(client: httpx.Client, base: str, engine, clips: list[tuple[str, bytes]], decoded: list,
              repeats: int) -> list[dict]:
    def direct(i: int) -> tuple[float, str, None]:
        t = time.perf_counter()
        text = engine.transcribe(stt_engine.TranscriptionRequest(audio=decoded[i])).text
        return time.perf_counter() - t, text, None

    def service(i: int) -> tuple[float, str, float]:
        t = time.perf_counter()
        r = client.post(f"{base}/transcribe", files={"file": (clips[i][0], clips[i][1], "audio/wav")})
        dt = time.perf_counter() - t
        r.raise_for_status()
        return dt, r.json()["text"], r.json()["processing_time"]

    return ab_rounds(len(clips), direct, service, repeats)


def bench_tts(client: httpx.Client, base: str, engine, repeats: int) -> list[dict]:
    def direct(i: int) -> tuple[float, int, None]:
        t = time.perf_counter()
        req = tts_engine.SynthesisRequest(text=TTS_TEXTS[i], **DETERMINISTIC)
        frames = sum(len(a) for a in engine.synthesize_sentences(req))
        return time.perf_counter() - t, frames, None

    def service(i: int) -> tuple[float, int, None]:
        t = time.perf_counter()  # default body: streamed WAV (44-byte header + int16), read to the end
        r = client.post(f"{base}/synthesize", json={"text": TTS_TEXTS[i], **DETERMINISTIC})
        dt = time.perf_counter() - t
        r.raise_for_status()
        return dt, (len(r.content) - 44) // 2, None

    return ab_rounds(len(TTS_TEXTS), direct, service, repeats)


def bench_ttfb(client: httpx.Client, base: str, engine, n: int) -> dict:
    out: dict[str, list[float]] = {"d_first": [], "d_all": [], "s_first": [], "s_all": []}
    req = tts_engine.SynthesisRequest(text=TTFB_TEXT, **DETERMINISTIC)
    body = {"text": TTFB_TEXT, "format": "pcm", **DETERMINISTIC}  # raw PCM: every body byte is audio
    def direct() -> tuple[float, float]:
        t = time.perf_counter()
        it = engine.synthesize_sentences(req)
        next(it)
        first = time.perf_counter() - t
        list(it)
        return first, time.perf_counter() - t

    def service() -> tuple[float, float]:
        t, first = time.perf_counter(), None
        with client.stream("POST", f"{base}/synthesize", json=body) as r:
            r.raise_for_status()
            for chunk in r.iter_raw():
                if chunk and first is None:
                    first = time.perf_counter() - t
        return first, time.perf_counter() - t

    for i in range(n + 1):  # the first pair is a warm-up; the order alternates
        if i % 2:
            (d_first, d_all), (s_first, s_all) = direct(), service()
        else:
            (s_first, s_all), (d_first, d_all) = service(), direct()
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

    require_eval_data(args.eval_dir / "clean", option="--eval-dir")
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
    decoded = [decode_audio(data) for _, data in clips]
    t = time.perf_counter()
    for _, data in clips:
        decode_audio(data)
    decode_s = time.perf_counter() - t
    alone_s = stt_alone(stt_direct, decoded)
    token = stt_settings.secret_token() or tts_settings.secret_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with ExitStack() as stack, httpx.Client(timeout=120, headers=headers) as client:
        stt_url = args.stt_url or spawn(stack, "stt")
        tts_url = args.tts_url or spawn(stack, "tts")
        stt_url, tts_url = stt_url.rstrip("/"), tts_url.rstrip("/")
        wait_ready(client, stt_url), wait_ready(client, tts_url)
        floor = http_floor(client, stt_url), http_floor(client, tts_url)
        stt = bench_stt(client, stt_url, stt_direct, clips, decoded, args.repeats)
        tts = bench_tts(client, tts_url, tts_direct, args.repeats)
        ttfb = bench_ttfb(client, tts_url, tts_direct, args.ttfb_runs)
    elapsed, tts_rate = time.perf_counter() - started, tts_direct.sample_rate_for(None)

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    print("# Speech benchmark: service vs direct engine\n")
    print(f"- machine: {cpu}; {len(os.sched_getaffinity(0))} usable CPUs (os.cpu_count {os.cpu_count()}); "
          f"{platform.platform()}; Python {platform.python_version()}")
    print(f"- stt: faster-whisper {version('faster-whisper')} / ctranslate2 {version('ctranslate2')}, model "
          f"{stt_direct.model_name} on {stt_direct.device}/{stt_direct.compute_type}, beam "
          f"{stt_settings.stt_beam_size}, vad {stt_settings.stt_vad_filter}, cpu_threads "
          f"{stt_settings.stt_cpu_threads or 'default'}; service {args.stt_url or 'own process ' + stt_url}")
    print(f"- tts: piper-tts {version('piper-tts')} / onnxruntime {version('onnxruntime')}, voice "
          f"{tts_direct.default_voice} ({tts_rate} Hz), noise_scale=noise_w=0; service "
          f"{args.tts_url or 'own process ' + tts_url}")
    print(f"- HTTP floor (GET /health/live p50): stt {ms(floor[0])}, tts {ms(floor[1])}")
    print(f"- rounds: {args.repeats} (reported: the median-overhead round); total run {elapsed:.0f} s\n")

    print("## Real-time factor (processing time / audio time; lower is faster)\n")
    print("| benchmark | audio | direct RTF | service RTF | overhead | p50 direct | p50 service | p50 extra/call |"
          " overhead per round | outputs differ |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    stt_audio_s = sum(seg.duration_s for seg in decoded)
    rows = [("stt /transcribe", stt, stt_audio_s, f"{len(clips)} clips"),
            ("tts /synthesize", tts, sum(tts[0]["out"]) / tts_rate, f"{len(TTS_TEXTS)} texts")]
    for name, rounds, audio_s, what in rows:
        r = median_round(rounds)
        extra = [s - d for s, d in zip(r["service"], r["direct"])]
        pooled = sum(sum(x["service"]) for x in rounds) / sum(sum(x["direct"]) for x in rounds) - 1
        per_round = ", ".join(f"{x['overhead'] * 100:+.1f}%" for x in rounds) + f" (pooled {pooled * 100:+.1f}%)"
        print(f"| {name} | {what}, {audio_s:.1f} s | {sum(r['direct']) / audio_s:.3f} | "
              f"{sum(r['service']) / audio_s:.3f} | **{r['overhead'] * 100:+.1f} %** | {ms(p(r['direct'], 50))} | "
              f"{ms(p(r['service'], 50))} | {ms(p(extra, 50))} | {per_round} | {r['mismatched']} |")
    r = median_round(stt)
    in_engine = sum(r["engine"])
    print(f"\nstt split of the median round: service wall {sum(r['service']):.3f} s = engine time reported by "
          f"the service {in_engine:.3f} s + {sum(r['service']) - in_engine:.3f} s outside the engine (HTTP, "
          f"multipart, 2x decode_audio, queue, thread hop, JSON); direct engine {sum(r['direct']):.3f} s. "
          f"One decode_audio of all {len(clips)} clips: {ms(decode_s)}.")
    alone_rtf, with_rtf = alone_s / stt_audio_s, sum(r["direct"]) / stt_audio_s
    print(f"stt direct engine alone, before the services started in this process: RTF {alone_rtf:.3f}; during "
          f"the rounds: {with_rtf:.3f} ({(with_rtf / alone_rtf - 1) * 100:+.1f} %). A large rise means the "
          "in-process services slow every CTranslate2 model in the process (see the module doc).")
    print("Goal: overhead <= 5 %: stt " + ("met" if r["overhead"] <= 0.05 else "NOT met") + ", tts "
          + ("met" if median_round(tts)["overhead"] <= 0.05 else "NOT met") + ".\n")

    print(f"## tts time to first audio byte, streaming ({args.ttfb_runs} runs, format=pcm)\n")
    print(f"Text (3 sentences): \"{TTFB_TEXT}\"\n")
    print("| path | first audio p50 | first audio p95 | complete p50 | complete p95 | first / complete (p50) |")
    print("|---|---|---|---|---|---|")
    for label, first, whole in (("direct: first sentence from synthesize_sentences", ttfb["d_first"], ttfb["d_all"]),
                                ("service: first PCM byte over HTTP", ttfb["s_first"], ttfb["s_all"])):
        print(f"| {label} | {ms(p(first, 50))} | {ms(p(first, 95))} | {ms(p(whole, 50))} | {ms(p(whole, 95))} | "
              f"{p(first, 50) / p(whole, 50):.2f} |")
    print(f"\nService first byte - direct first sentence (p50): {ms(p(ttfb['s_first'], 50) - p(ttfb['d_first'], 50))}.")
    print("\nReproduce: `.venv/bin/python scripts/bench_speech.py` (starts both services as their own processes), or `make run` then "
          "`.venv/bin/python scripts/bench_speech.py --stt-url http://127.0.0.1:9000 --tts-url http://127.0.0.1:7000`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
