#!/usr/bin/env python3
"""LLM benchmark: the two OpenAI-compatible LLM services (llm on llama.cpp, llm-flan on FLAN-T5) against the
same engines called directly, and llm-flan's throughput with and without dynamic batching. Prints a markdown
report of figures (no pass/fail thresholds); exit code 0.

    .venv/bin/python scripts/bench_llm.py                  # everything (about 4-5 min on 2 quiet CPUs)
    .venv/bin/python scripts/bench_llm.py --quick          # fewer repetitions and configurations (about 2.5 min)
    .venv/bin/python scripts/bench_llm.py --wait-quiet 120 # on a shared machine: wait for idle CPUs first
    .venv/bin/python scripts/bench_llm.py --skip-flan      # llm (SmolLM2 on llama.cpp) only
    .venv/bin/python scripts/bench_llm.py --skip-llm --flan-dir /tmp/flan-rand   # keep the built model for reruns

Every request asks for 32 new tokens (``max_tokens=32``) at temperature 0 (greedy), and every figure is
checked against the tokens really generated (``usage.completion_tokens``, or the backend's token callback).
"Service" is the wall time of the HTTP request over loopback through the real ``openai`` client (JSON in,
prompt building, queue, thread hop, JSON or server-sent events out); "direct" is the engine's library called
without HTTP. Calls run one at a time, direct and service alternating (A/B, B/A; three sides rotate) so
drift cancels; each side gets a warm-up call first. Overhead = service / direct - 1, on the p50 and on the mean latency. tok/s = tokens
generated / request latency (so it includes the prompt's evaluation: it is what a caller sees).

1. llm (SmolLM2-135M-Instruct Q4_1 GGUF on llama.cpp). Direct: ``llama_cpp.Llama`` in this process, built as
   the service builds it (model path, ``LLM_N_CTX`` and thread count read from an unstarted
   ``services.llm.engine.LlamaCppEngine``), ``create_chat_completion`` with the sampling the service uses
   (temperature 0, top_k 0, min_p 0, repeat_penalty 1). The prompt alternates between two long-answer
   instructions on every call. Two direct sides, each its own ``Llama``: as llama-cpp-python is used by
   default (its KV cache serves the shared prefix - the chat template's system prompt - so only the rest of
   the prompt is evaluated), and with ``Llama.reset()`` before each call (the whole prompt evaluated, which is
   what the service does on purpose for reproducible greedy output). Overhead is given against both.
   The service's own time in the model (``engine_inference_duration_seconds`` from its /metrics, read around
   each call) splits the overhead into model work and HTTP/queue. Streaming: time to the first content chunk
   (openai ``stream=True`` vs ``create_chat_completion(stream=True)``). A last row runs the direct model
   (reset) with every CPU for prompt and generation, as a reference for the service's thread default.

2. llm-flan with a random-weight model of flan-t5-base size (no weights can be downloaded here). Built in a
   temp dir (or --flan-dir): ``T5Config`` with flan-t5-base's dimensions (vocab 32128, d_model 768, d_ff 2048,
   12+12 layers, 12 heads, d_kv 64, gated-GELU, ``tie_word_embeddings=False``, which transformers 5 saves as
   ``scale_decoder_outputs=False`` as FLAN-T5 has) and, like the real checkpoint, an output projection
   (``lm_head``) of its own (transformers 5 ties it to the embeddings at init, so a separate random matrix is
   written into the checkpoint; loading keeps it untied): 247.6 M parameters, as flan-t5-base. Tokenizer: a
   sentencepiece unigram model (32000 pieces, T5's ids: pad 0, eos 1, unk 2) trained here on text found in
   the virtual environment's packages, saved as a T5 tokenizer with 100 sentinel ids (32100 tokens, as FLAN-T5);
   ``--tokenizer byt5`` uses ``ByT5Tokenizer`` instead (then a token is a byte). Random weights emit arbitrary
   tokens and may emit EOS: to force exactly 32 new tokens, the ``lm_head`` rows of EOS, pad, unk and every
   id that is not a plain vocabulary piece (sentinels, the 28 padding rows) are zero, so their logit is
   exactly 0 while the greedy maximum over 32 000 random rows is always far above 0 (every run checks that
   32 tokens came back). Decoding cost per token does not depend on the weights' values.
   Backends: transformers (fp32, CPU) and CTranslate2 (int8; converted from the same dir by the backend's own
   conversion path, ``CTranslate2Backend.load`` -> ``convert_to_ct2``, into the temp dir). Direct = the
   backend's ``generate`` with a token callback that only counts (stops at 32 or EOS), run in a worker process
   of its own, as the service is: torch, CTranslate2 and llama.cpp each bring their own OpenMP runtime, and
   several in one process on 2 CPUs slow each other (see scripts/bench_speech.py). The service runs with its
   default batching (FLAN_T5_MAX_BATCH_SIZE=8, 10 ms window), so its single-request latency includes the
   window; its own time in ``generate`` (/metrics, token callbacks included) splits the overhead as in 1.
   Also: model build / conversion / load times, time to first token, and the backend's own batch scaling
   (one generate call of 1, 4, 8 rows: what batching can gain at most).

3. Throughput with dynamic batching: llm-flan at 1, 4 and 8 concurrent clients (asyncio + httpx), each
   sending --requests requests of 32 tokens back to back (8 prompts of different lengths, rotated), batching
   on (FLAN_T5_MAX_BATCH_SIZE=8, FLAN_T5_BATCH_WINDOW_MS=10) vs off (FLAN_T5_MAX_BATCH_SIZE=1); one service
   process per backend and batching setting (the concurrency levels run one after the other against it).
   Aggregate tok/s = tokens of all requests / wall time of the level; p50/p95 request latency; the mean batch
   size actually achieved = delta of the service's /metrics ``llm_batch_size`` histogram (sum / count) over
   the level.

Caveats. (1) The services run as their own processes, as in `make run`, with LOG_LEVEL=WARNING,
REQUEST_TIMEOUT_S=600 (a queued request under batching-off must not hit the 60 s default deadline) and
FLAN_T5_MAX_INPUT_TOKENS / FLAN_T5_MAX_LENGTH at 512. (2) Random weights: speed only; texts are gibberish.
(3) Other processes on a shared machine do more than add noise: torch, llama.cpp and CTranslate2 threads
spin-wait for each other, so a busy core can make a call 10-50x slower. Every section reports the CPU that
other processes took while it was measured (system busy time from /proc/stat minus this process tree's) and
flags it above 10 %; --wait-quiet S waits (up to S seconds) for a quiet machine before each measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_TOKENS = 32
PROMPTS_LLM = (
    "Write a long story about a dragon who learns to bake bread in a small mountain village.",
    "Explain in detail how a steam engine works, step by step, for a curious child.",
)
PROMPT_FLAN = PROMPTS_LLM[0]
PROMPTS_LOAD = (  # throughput clients rotate over these (different lengths: padding inside a batch)
    "Write a long story about a dragon who learns to bake bread in a small mountain village.",
    "Summarise the plot of a detective novel.",
    "Explain in detail how a steam engine works, step by step, for a curious child who asks many questions.",
    "List ten things to pack for a week of hiking.",
    "Translate to German: The train to Edinburgh leaves at half past nine from platform three.",
    "Describe the water cycle.",
    "Write a polite email asking a colleague to move our meeting from Tuesday to Thursday afternoon.",
    "Why is the sky blue?",
)
T5_BASE = {"vocab_size": 32128, "d_model": 768, "d_ff": 2048, "num_layers": 12, "num_decoder_layers": 12,
           "num_heads": 12, "d_kv": 64, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
           "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}
SPM_PIECES = 32000
SPM_EXTRA_IDS = 100


# --- helpers (as in bench_speech.py / bench_denoise.py) ----------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """``python -m services.<package>`` as its own process on a free port (as `make run` does); its stderr
    goes to a log file, shown when it does not get ready."""

    def __init__(self, stack: ExitStack, package: str, env: dict[str, str], log_dir: Path, label: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"{label}.log"
        self.started = time.perf_counter()
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", f"services.{package}"], cwd=ROOT,
                                         env={**os.environ, "PORT": str(self.port), "LOG_LEVEL": "WARNING", **env},
                                         stdout=subprocess.DEVNULL, stderr=err)
        self._stack = stack
        stack.callback(self.stop)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def wait_ready(self, client: httpx.Client, timeout_s: float = 300.0) -> tuple[float, dict]:
        """Seconds from spawn to /health/ready 200 (interpreter start, imports, model load) and its body."""
        give_up = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.log.stem} exited with {self.proc.returncode} before getting ready; "
                                 f"its log:\n{self.log_tail()}")
            try:
                r = client.get(f"{self.url}/health/ready", timeout=5)
                if r.status_code == 200:
                    return time.perf_counter() - self.started, r.json()
                last = r.text[:500]
            except httpx.HTTPError as exc:
                last = str(exc)
            if time.monotonic() > give_up:
                raise SystemExit(f"{self.url}/health/ready did not answer 200 within {timeout_s:.0f} s: {last}\n"
                                 f"{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def _ticks(fields: list[str], first: int, n: int) -> float:
    return sum(int(x) for x in fields[first:first + n]) / os.sysconf("SC_CLK_TCK")


def _system_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all CPUs; /proc/stat minus idle and iowait)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process and everything it started (services, workers), reaped children included."""
    stats: dict[int, list[str]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stats[int(d.name)] = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                pass
    children: dict[int, list[int]] = {}
    for pid, f in stats.items():
        children.setdefault(int(f[1]), []).append(pid)
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += _ticks(stats[pid], 11, 4)  # utime, stime, cutime, cstime
        todo.extend(children.get(pid, []))
    return total


class CpuWatch:
    """How much CPU other processes on the machine took while a measurement ran: system busy time minus
    this process tree's. On a shared machine a few % is noise; tens of % make the wall times meaningless
    (torch/llama.cpp/CTranslate2 spin-wait for each other's threads, and lose much more than their share)."""

    def __init__(self) -> None:
        self.t, self.busy, self.own = time.perf_counter(), _system_busy_s(), _own_cpu_s()

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t
        busy, own = _system_busy_s() - self.busy, _own_cpu_s() - self.own
        foreign = max(0.0, busy - own)
        return {"wall": wall, "own": own, "foreign": foreign,
                "share": foreign / max(1e-9, wall * (os.cpu_count() or 1))}


def foreign_note(w: dict | None) -> str:
    if not w:
        return "n/a"
    flag = " **(contended: figures unreliable; see --wait-quiet)**" if w["share"] > 0.10 else ""
    return f"{w['share'] * 100:.0f} % of the CPUs ({w['foreign']:.1f} CPU-s in {w['wall']:.0f} s){flag}"


def wait_quiet(max_s: float, window_s: float = 0.5, threshold: float = 0.05) -> float:
    """Wait (at most ``max_s``) until other processes use less than ``threshold`` of the CPUs over two windows
    in a row; the seconds waited."""
    if max_s <= 0:
        return 0.0
    t0, calm = time.perf_counter(), 0
    while time.perf_counter() - t0 < max_s:
        w = CpuWatch()
        time.sleep(window_s)
        calm = calm + 1 if w.stop()["share"] < threshold else 0
        if calm >= 2:
            break
    return time.perf_counter() - t0


def settled(read: Callable[[], tuple[float, float]], grow_to: float | None = None, max_s: float = 2.0
            ) -> tuple[float, float]:
    """A /metrics reading once it stops changing (the batcher records a generate call when the call returns,
    which can be just after the last response went out), or once its count reaches ``grow_to``."""
    give_up = time.monotonic() + max_s
    last = read()
    while time.monotonic() < give_up:
        if grow_to is not None and last[1] >= grow_to:
            return last
        time.sleep(0.1)
        now = read()
        if grow_to is None and now == last:
            return now
        last = now
    return last


def http_floor(client: httpx.Client, base: str, n: int = 20) -> float:
    """p50 of GET /health/live: what HTTP over loopback costs with no work behind it."""
    def once() -> float:
        t = time.perf_counter()
        client.get(f"{base}/health/live").raise_for_status()
        return time.perf_counter() - t

    return p([once() for _ in range(n + 1)][1:], 50)


def p(xs, q: float) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms" if np.isfinite(x) else "n/a"


def pct(x: float) -> str:
    return f"{x * 100:+.1f} %" if np.isfinite(x) else "n/a"


def pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def openai_client(base: str, token: str | None):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key=token or "unused", max_retries=0, timeout=600.0)


def call_service(oc, model: str, prompt: str) -> dict:
    """One non-streamed chat completion through the openai client: wall time, tokens, text."""
    t = time.perf_counter()
    r = oc.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                   max_tokens=MAX_TOKENS, temperature=0)
    dt = time.perf_counter() - t
    return {"s": dt, "tokens": r.usage.completion_tokens, "text": r.choices[0].message.content or "",
            "finish": r.choices[0].finish_reason, "prompt_tokens": r.usage.prompt_tokens}


def stream_service(oc, model: str, prompt: str) -> dict:
    """One streamed chat completion: time to the first content chunk, total, tokens (usage chunk)."""
    t, first, tokens, parts = time.perf_counter(), None, None, []
    stream = oc.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                        max_tokens=MAX_TOKENS, temperature=0, stream=True,
                                        stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter() - t
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"ttft": first if first is not None else float("nan"), "s": time.perf_counter() - t,
            "tokens": tokens, "text": "".join(parts)}


def rotate(n: int, sides: list[Callable[[int], dict]]) -> list[list[dict]]:
    """``n`` calls of each side (``side(i)``), one at a time, the order rotating every round (A/B, B/A for two)
    so drift cancels, after one warm-up call each."""
    for side in sides:
        side(0)
    out: list[list[dict]] = [[] for _ in sides]
    for i in range(n):
        for j in range(len(sides)):
            k = (i + j) % len(sides)
            out[k].append(sides[k](i))
    return out


def ab(n: int, direct: Callable[[int], dict], service: Callable[[int], dict]) -> tuple[list[dict], list[dict]]:
    d, s = rotate(n, [direct, service])
    return d, s


def latency_row(label: str, calls: list[dict]) -> str:
    secs = [c["s"] for c in calls]
    toks = [c["tokens"] for c in calls if c["tokens"] is not None]
    rates = [c["tokens"] / c["s"] for c in calls if c["tokens"] is not None]
    finish = Counter(c.get("finish") for c in calls if c.get("finish"))
    spread = f"{min(toks)}-{max(toks)}" if toks and min(toks) != max(toks) else (str(toks[0]) if toks else "?")
    return (f"| {label} | {len(calls)} | {spread} | {ms(p(secs, 50))} | {ms(mean(secs))} | {ms(p(secs, 95))} | "
            f"{p(rates, 50):.1f} | {sum(toks) / sum(secs):.1f} | "
            f"{', '.join(f'{k} x{v}' for k, v in finish.items()) or '-'} |")


LATENCY_HEADER = ("| path | calls | completion tokens | p50 latency | mean latency | p95 latency | tok/s (p50 of calls) |"
                  " tok/s (sum / sum) | finish_reason |\n|---|---|---|---|---|---|---|---|---|")


def overhead_line(d: list[dict], s: list[dict], what: str, rest: str) -> str:
    dp, sp = p([c["s"] for c in d], 50), p([c["s"] for c in s], 50)
    dm, sm = mean([c["s"] for c in d]), mean([c["s"] for c in s])
    same = sum(a["text"] == b["text"] for a, b in zip(d, s))
    eng = [c["engine_s"] for c in s if np.isfinite(c.get("engine_s", float("nan")))]
    split = ""
    if eng:
        ep = p(eng, 50)
        split = (f" Split (p50): the service's own {what} time (its /metrics `engine_inference_duration_seconds`) "
                 f"{ms(ep)} = direct {pct(ep / dp - 1)}; the other {ms(sp - ep)} of the request is {rest}.")
    return (f"Overhead service / direct - 1: **{pct(sp / dp - 1)} on p50** ({ms(sp - dp)} per request), "
            f"{pct(sm / dm - 1)} on the mean. Same text from both sides in {same} of {len(d)} pairs.{split}")


def ttft_table(rows: list[tuple[str, list[dict]]]) -> None:
    print("| path | runs | first token p50 | first token p95 | complete p50 | decode tok/s after the first token (p50) |")
    print("|---|---|---|---|---|---|")
    for label, runs in rows:
        firsts = [r["ttft"] for r in runs]
        totals = [r["s"] for r in runs]
        decode = [(r["tokens"] - 1) / (r["s"] - r["ttft"]) for r in runs
                  if r.get("tokens") and r["tokens"] > 1 and r["s"] > r["ttft"]]
        print(f"| {label} | {len(runs)} | {ms(p(firsts, 50))} | {ms(p(firsts, 95))} | {ms(p(totals, 50))} | "
              f"{p(decode, 50):.1f} |")


def short(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return json.dumps(text if len(text) <= n else text[:n] + "...")


# --- 1. llm (llama.cpp) ------------------------------------------------------------------------------------


def bench_llm(args, stack: ExitStack, client: httpx.Client, log_dir: Path) -> dict:
    import llama_cpp

    from services.llm.engine import LlamaCppEngine
    from services.llm.settings import Settings as LlmSettings

    settings = LlmSettings()
    engine = LlamaCppEngine(settings)  # not started: only what it would build (model path, n_ctx, threads)
    model_path, n_ctx = Path(engine.model_path), int(engine.n_ctx)
    threads = getattr(engine, "n_threads", None) or None  # None: llama-cpp-python's own defaults

    def build(n_threads: int | None):
        return llama_cpp.Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads,
                               n_threads_batch=n_threads, last_n_tokens_size=n_ctx, verbose=False)

    svc = Service(stack, "llm", {}, log_dir, "llm")
    t = time.perf_counter()
    cached, fresh = build(threads), build(threads)  # two models: one side's KV cache must not serve the other
    direct_load = (time.perf_counter() - t) / 2
    ready_s, ready = svc.wait_ready(client)
    floor = http_floor(client, svc.url)
    oc = openai_client(svc.url, settings.secret_token())
    sampling = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0}

    def direct_with(model, reset: bool) -> Callable[[int], dict]:
        def direct(i: int) -> dict:
            t = time.perf_counter()
            if reset:
                model.reset()
            r = model.create_chat_completion([{"role": "user", "content": PROMPTS_LLM[i % 2]}], max_tokens=MAX_TOKENS,
                                             **sampling)
            dt = time.perf_counter() - t
            return {"s": dt, "tokens": r["usage"]["completion_tokens"], "text": r["choices"][0]["message"]["content"],
                    "finish": r["choices"][0]["finish_reason"], "prompt_tokens": r["usage"]["prompt_tokens"]}
        return direct

    def service(i: int) -> dict:
        before = engine_time(client, svc.url, "complete")
        out = call_service(oc, "llm", PROMPTS_LLM[i % 2])
        after = settled(lambda: engine_time(client, svc.url, "complete"), grow_to=before[1] + 1)
        out["engine_s"] = after[0] - before[0] if after[1] - before[1] == 1 else float("nan")
        return out

    def stream_with(model, reset: bool) -> Callable[[int], dict]:
        def direct_stream(i: int) -> dict:
            t, first, n, parts, finish = time.perf_counter(), None, 0, [], None
            if reset:
                model.reset()
            for chunk in model.create_chat_completion([{"role": "user", "content": PROMPTS_LLM[i % 2]}],
                                                      max_tokens=MAX_TOKENS, stream=True, **sampling):
                piece = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                finish = (chunk["choices"][0].get("finish_reason") if chunk["choices"] else None) or finish
                if piece:
                    n += 1
                    parts.append(piece)
                    if first is None:
                        first = time.perf_counter() - t
            # no usage in llama-cpp-python's stream: "length" means max_tokens were generated, else count chunks
            return {"ttft": first if first is not None else float("nan"), "s": time.perf_counter() - t,
                    "tokens": MAX_TOKENS if finish == "length" else n, "text": "".join(parts)}
        return direct_stream

    def service_stream(i: int) -> dict:
        return stream_service(oc, "llm", PROMPTS_LLM[i % 2])

    waited = wait_quiet(args.wait_quiet)
    watch = CpuWatch()
    plain, reset, served = rotate(args.reps, [direct_with(cached, False), direct_with(fresh, True), service])
    s_plain, s_reset, s_served = rotate(args.reps, [stream_with(cached, False), stream_with(fresh, True),
                                                    service_stream])
    cpu = watch.stop()
    all_cores = len(os.sched_getaffinity(0))
    ref, ref_cpu = None, None
    if (threads or 0) != all_cores:
        both = build(all_cores)
        call = direct_with(both, True)
        call(0)
        ref, watch, t0 = [], CpuWatch(), time.perf_counter()
        for i in range(args.reps):  # at most ~60 s: with a busy core, spinning threads can take minutes a call
            if i and time.perf_counter() - t0 > 60:
                break
            ref.append(call(i))
        ref_cpu = watch.stop()
        both.close()
    used = (cached.context_params.n_threads, cached.context_params.n_threads_batch)
    cached.close()
    fresh.close()
    svc.stop()
    return {"settings": settings, "model_path": model_path, "n_ctx": n_ctx, "direct_load": direct_load,
            "ready_s": ready_s, "ready": ready, "floor": floor, "plain": plain, "reset": reset, "service": served,
            "s_plain": s_plain, "s_reset": s_reset, "s_service": s_served, "ref": ref, "ref_threads": all_cores, "ref_cpu": ref_cpu,
            "threads": used, "url": svc.url, "cpu": cpu, "waited": waited}


def report_llm(r: dict) -> None:
    st = r["settings"]
    comp = r["ready"].get("components", {}).get("llama-cpp", {})
    print(f"## 1. llm: {comp.get('model', 'llama.cpp')} on llama.cpp, {MAX_TOKENS} new tokens, temperature 0\n")
    print(f"- model: {r['model_path']} ({r['model_path'].stat().st_size / 2**20:.0f} MiB); llama-cpp-python "
          f"{pkg('llama-cpp-python')}; n_ctx {r['n_ctx']}; LLM_N_THREADS={st.llm_n_threads} -> direct side threads "
          f"{r['threads'][0]} for generation, {r['threads'][1]} for the prompt, as the service builds it (its "
          f"/health/ready: n_threads {comp.get('n_threads', '?')})")
    print(f"- direct `Llama(...)` load {r['direct_load']:.2f} s; service spawn -> /health/ready {r['ready_s']:.1f} s "
          f"(own process {r['url']}); HTTP floor (GET /health/live p50) {ms(r['floor'])}")
    print(f"- prompts (alternating): {' / '.join(short(x, 60) for x in PROMPTS_LLM)}; prompt tokens "
          f"{sorted({c['prompt_tokens'] for c in r['service']})} (chat template with SmolLM2's default system prompt)")
    print(f"- other processes during these measurements: {foreign_note(r['cpu'])}"
          + (f" (waited {r['waited']:.0f} s for a quiet machine first)" if r["waited"] else "") + "\n")
    print(LATENCY_HEADER)
    print(latency_row("direct `create_chat_completion` (llama-cpp-python's prefix cache: the system prompt is "
                      "not evaluated again)", r["plain"]))
    print(latency_row("direct, `Llama.reset()` before each call (whole prompt evaluated, as the service does)",
                      r["reset"]))
    print(latency_row("service POST /v1/chat/completions (openai client)", r["service"]))
    if r["ref"]:
        print(latency_row(f"reference: direct with reset, n_threads = n_threads_batch = {r['ref_threads']} (all CPUs)",
                          r["ref"]))
        print(f"\nThe reference row ran after the others; other processes took {foreign_note(r['ref_cpu'])} "
              "meanwhile (with every CPU in use by llama.cpp, a core taken by anything else stalls all its threads).")
    print()
    print("vs direct as llama-cpp-python is used by default: "
          + overhead_line(r["plain"], r["service"], "`complete` (runner: prompt + generation)",
                          "HTTP, JSON, validation, queue and thread hop"))
    print("\nvs direct doing the same work (reset first): "
          + overhead_line(r["reset"], r["service"], "`complete`", "HTTP, JSON, validation, queue and thread hop"))
    print(f"\nSample answer: {short(r['service'][0]['text'])}\n")
    print(f"Streaming ({len(r['s_plain'])} runs each, rotating order):\n")
    ttft_table([("direct `create_chat_completion(stream=True)`, prefix cache: first content chunk", r["s_plain"]),
                ("direct, reset first: first content chunk", r["s_reset"]),
                ("service `stream=True` (openai client): first content chunk", r["s_service"])])
    d0, d1 = p([x["ttft"] for x in r["s_plain"]], 50), p([x["ttft"] for x in r["s_reset"]], 50)
    s = p([x["ttft"] for x in r["s_service"]], 50)
    print(f"\nService - direct time to first token (p50): {ms(s - d0)} vs the prefix-cached direct call, {ms(s - d1)} vs "
          f"the reset one. Streamed completion tokens (service usage): {sorted({x['tokens'] for x in r['s_service']})}.\n")


# --- 2. llm-flan: random flan-t5-base-sized model ----------------------------------------------------------


def _corpus(max_lines: int) -> list[str]:
    """Lines of text from the virtual environment's packages (docs first, then Python source)."""
    import sysconfig

    root = Path(sysconfig.get_paths()["purelib"])
    lines: list[str] = []
    for pattern in ("*.md", "*.rst", "*.txt", "*.py"):
        for f in sorted(root.rglob(pattern)):
            try:
                text = f.read_text("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            lines.extend(s for s in (ln.strip() for ln in text.splitlines()) if len(s) > 20)
            if len(lines) >= max_lines:
                return lines[:max_lines]
    return lines


def _w_build(directory: str, tokenizer_kind: str, corpus_lines: int, seed: int) -> dict:
    """(worker process) Build the random flan-t5-base-sized model and its tokenizer in ``directory``."""
    import io

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

    _quiet()
    out: dict[str, Any] = {}
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if tokenizer_kind == "spm":
        import sentencepiece as spm
        from transformers import T5Tokenizer

        lines = _corpus(corpus_lines)
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buf, vocab_size=SPM_PIECES, model_type="unigram",
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, input_sentence_size=len(lines), shuffle_input_sentence=False,
            hard_vocab_limit=False, num_threads=os.cpu_count() or 1, minloglevel=2)
        spm_dir = target / "spm"
        spm_dir.mkdir(exist_ok=True)
        (spm_dir / "spiece.model").write_bytes(buf.getvalue())
        tok = T5Tokenizer.from_pretrained(spm_dir, extra_ids=SPM_EXTRA_IDS)  # transformers' converter
        plain = range(3, len(tok) - SPM_EXTRA_IDS)  # vocabulary pieces; not pad/eos/unk, not the sentinels
        out["corpus"] = f"{len(lines)} lines, {sum(map(len, lines)) / 1e6:.1f} MB"
    else:
        from transformers import ByT5Tokenizer

        tok = ByT5Tokenizer()
        plain = range(3, 3 + 256)  # the bytes
    out["tokenizer_s"] = time.perf_counter() - t
    out["tokenizer"] = f"{type(tok).__name__}, {len(tok)} tokens"
    out["tokenizer_len"] = len(tok)

    t = time.perf_counter()
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**T5_BASE)).eval()
    out["init_s"] = time.perf_counter() - t
    out["tied_at_init"] = model.lm_head.weight is model.shared.weight
    alive = torch.zeros(T5_BASE["vocab_size"], dtype=torch.bool)
    alive[plain.start:plain.stop] = True
    t = time.perf_counter()
    model.save_pretrained(target)
    tok.save_pretrained(target)
    weights = target / "model.safetensors"
    state = load_file(weights)
    head = torch.empty(T5_BASE["vocab_size"], T5_BASE["d_model"]).normal_(0.0, 1.0)  # T5's init of lm_head
    head[~alive] = 0.0  # logit exactly 0: never the greedy maximum
    state["lm_head.weight"] = head.contiguous()
    save_file(state, weights, metadata={"format": "pt"})
    out["save_s"] = time.perf_counter() - t
    out["zeroed_rows"] = int((~alive).sum())
    out["config"] = {k: v for k, v in json.loads((target / "config.json").read_text()).items()
                     if k in ("tie_word_embeddings", "scale_decoder_outputs")}
    loaded = AutoModelForSeq2SeqLM.from_pretrained(target)
    out["params"] = sum(x.numel() for x in loaded.parameters())
    out["untied_after_load"] = loaded.lm_head.weight.data_ptr() != loaded.shared.weight.data_ptr()
    out["eos_row_zero"] = bool((loaded.lm_head.weight[T5_BASE["eos_token_id"]] == 0).all())
    out["size_mb"] = weights.stat().st_size / 2**20
    return out


_WORKER: dict[str, Any] = {}


def _quiet() -> None:
    """(worker process) transformers' warnings and progress bars off (the report is on stdout)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _w_load(kind: str, model_dir: str, ct2_dir: str, threads: int, compute_type: str) -> dict:
    """(worker process) Load the backend as the service does (weights loaded in a thread that exits)."""
    from services.llm_flan.backends import CTranslate2Backend, TransformersBackend

    _quiet()

    def make():
        if kind == "transformers":
            return TransformersBackend(model_dir, device="cpu", cpu_threads=threads, allow_download=False)
        return CTranslate2Backend(model_dir, device="cpu", compute_type=compute_type, ct2_dir=Path(ct2_dir),
                                  cpu_threads=threads, allow_download=False)

    def load_timed(backend) -> float:
        err: list[BaseException] = []

        def run() -> None:
            try:
                backend.load()
            except BaseException as exc:  # re-raised in this thread
                err.append(exc)

        t = time.perf_counter()
        th = threading.Thread(target=run, name="load")
        th.start()
        th.join()
        if err:
            raise err[0]
        return time.perf_counter() - t

    info: dict[str, Any] = {}
    backend = make()
    converting = kind == "ctranslate2" and not (Path(ct2_dir) / "model.bin").is_file()
    info["load_s"] = load_timed(backend)
    info["converted"] = converting
    if converting:  # the same load once more, from the converted dir: load alone
        again = make()
        info["reload_s"] = load_timed(again)
        del again
        info["ct2_mb"] = (Path(ct2_dir) / "model.bin").stat().st_size / 2**20
    if kind == "transformers":
        import torch

        info["torch_threads"] = torch.get_num_threads()
    info["describe"] = backend.describe()
    info["eos"] = backend.eos_id
    _WORKER["backend"] = backend
    return info


def _w_generate(prompts: list[str], max_new: int) -> dict:
    """(worker process) One generate call over ``prompts`` (one row each), greedy; the callback only counts."""
    from services.llm_flan.backends import Sampling

    backend = _WORKER["backend"]
    inputs = [backend.encode(x) for x in prompts]
    tokens: list[list[int]] = [[] for _ in prompts]
    first: list[float] = []
    eos = 0

    def on_token(row: int, token: int) -> bool:
        nonlocal eos
        if not first:
            first.append(time.perf_counter() - t0)
        if token == backend.eos_id:
            eos += 1
            return True
        tokens[row].append(token)
        return len(tokens[row]) >= max_new

    t0 = time.perf_counter()
    backend.generate(inputs, Sampling(0.0, 1.0), max_new, on_token)
    s = time.perf_counter() - t0
    return {"s": s, "ttft": first[0] if first else float("nan"), "rows": [len(x) for x in tokens],
            "tokens": len(tokens[0]), "eos": eos, "text": backend.decode(tokens[0]),
            "prompt_tokens": len(inputs[0])}


def build_flan_model(args, stack: ExitStack) -> tuple[Path, dict]:
    if args.flan_dir:
        model_dir = Path(args.flan_dir).expanduser().resolve()
        if (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file():
            return model_dir, {"reused": True}
    else:
        model_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-llm-flan-"))) / "model"
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        t = time.perf_counter()
        info = pool.submit(_w_build, str(model_dir), args.tokenizer, args.corpus_lines, 1234).result()
        info["total_s"] = time.perf_counter() - t
    return model_dir, info


def flan_env(model_dir: Path, backend: str, ct2_dir: Path, batch: int, window_ms: float) -> dict[str, str]:
    return {"FLAN_T5_MODEL_SIZE": str(model_dir), "FLAN_T5_BACKEND": backend, "FLAN_T5_CT2_DIR": str(ct2_dir),
            "FLAN_T5_DEVICE": "cpu", "FLAN_T5_ALLOW_DOWNLOAD": "false", "FLAN_T5_MAX_BATCH_SIZE": str(batch),
            "FLAN_T5_BATCH_WINDOW_MS": str(window_ms), "FLAN_T5_MAX_INPUT_TOKENS": "512",
            "FLAN_T5_MAX_LENGTH": "512", "REQUEST_TIMEOUT_S": "600", "MAX_QUEUE": "32"}


def histogram(client: httpx.Client, base: str, name: str, **labels: str) -> tuple[float, float]:
    """(sum, count) of the service's Prometheus histogram ``name`` over the label sets that have ``labels``."""
    total = count = 0.0
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in client.get(f"{base}/metrics").text.splitlines():
        if not line.startswith(name) or not all(w in line for w in want):
            continue
        key, value = line.rsplit(" ", 1)
        if key.split("{", 1)[0] == f"{name}_sum":
            total += float(value)
        elif key.split("{", 1)[0] == f"{name}_count":
            count += float(value)
    return total, count


def batch_histogram(client: httpx.Client, base: str) -> tuple[float, float]:
    """(sum, count) of the service's ``llm_batch_size`` histogram (rows per generate call)."""
    return histogram(client, base, "llm_batch_size")


def engine_time(client: httpx.Client, base: str, operation: str) -> tuple[float, float]:
    """(seconds, calls) the service spent in its blocking model calls (``engine_inference_duration_seconds``)."""
    return histogram(client, base, "engine_inference_duration_seconds", operation=operation)


async def _load_level(base: str, headers: dict, clients: int, requests: int) -> dict:
    lat: list[float] = []
    toks: list[int] = []
    errors: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600, limits=limits) as ac:
        async def one_client(k: int) -> None:
            for j in range(requests):
                body = {"model": "llm-flan", "max_tokens": MAX_TOKENS, "temperature": 0,
                        "messages": [{"role": "user", "content": PROMPTS_LOAD[(k + j) % len(PROMPTS_LOAD)]}]}
                t = time.perf_counter()
                try:
                    r = await ac.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                dt = time.perf_counter() - t
                if r.status_code != 200:
                    errors[f"HTTP {r.status_code}"] += 1
                    continue
                lat.append(dt)
                toks.append(r.json()["usage"]["completion_tokens"])

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    return {"lat": lat, "tokens": toks, "errors": errors, "wall": wall}


def run_levels(args, client: httpx.Client, svc: Service, headers: dict) -> list[dict]:
    out = []
    for c in args.concurrency:
        waited = wait_quiet(args.wait_quiet)
        before = settled(lambda: batch_histogram(client, svc.url))
        watch = CpuWatch()
        r = asyncio.run(_load_level(svc.url, headers, c, args.requests))
        r["cpu"] = watch.stop()
        after = settled(lambda: batch_histogram(client, svc.url))
        r.update(clients=c, batches=after[1] - before[1], rows=after[0] - before[0], waited=waited)
        out.append(r)
    return out


def bench_flan_backend(args, stack: ExitStack, client: httpx.Client, log_dir: Path, kind: str, model_dir: Path,
                       ct2_dir: Path, token: str | None, settings) -> dict:
    res: dict[str, Any] = {"kind": kind}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as worker:
        t = time.perf_counter()
        res["load"] = worker.submit(_w_load, kind, str(model_dir), str(ct2_dir), settings.flan_t5_cpu_threads,
                                    settings.flan_t5_ct2_compute_type).result()
        res["worker_start_s"] = time.perf_counter() - t
        with ExitStack() as on_stack:
            svc = Service(on_stack, "llm_flan", flan_env(model_dir, kind, ct2_dir, 8, 10.0), log_dir,
                          f"llm-flan-{kind}-batch8")
            res["ready_s"], res["ready"] = svc.wait_ready(client)
            res["floor"] = http_floor(client, svc.url)
            res["url"] = svc.url
            oc = openai_client(svc.url, token)

            def direct(i: int) -> dict:
                return worker.submit(_w_generate, [PROMPT_FLAN], MAX_TOKENS).result()

            def service(i: int) -> dict:
                before = engine_time(client, svc.url, "generate")
                out = call_service(oc, "llm-flan", PROMPT_FLAN)
                after = settled(lambda: engine_time(client, svc.url, "generate"), grow_to=before[1] + 1)
                out["engine_s"] = after[0] - before[0] if after[1] - before[1] == 1 else float("nan")
                return out

            res["waited"] = wait_quiet(args.wait_quiet)
            watch = CpuWatch()
            res["direct"], res["service"] = ab(args.reps, direct, service)
            res["s_service"] = [stream_service(oc, "llm-flan", PROMPT_FLAN) for _ in range(args.reps)]
            res["scaling"] = {b: worker.submit(_w_generate, [PROMPTS_LOAD[i % len(PROMPTS_LOAD)] for i in range(b)],
                                               MAX_TOKENS).result() for b in (1, 4, 8)}
            res["cpu"] = watch.stop()
            worker.shutdown()  # frees its copy of the model before the load tests
            if kind in args.batch_backends:
                res["on"] = run_levels(args, client, svc, headers)
                res["ready_on"] = res["ready"]
        if kind in args.batch_backends:
            with ExitStack() as off_stack:
                off = Service(off_stack, "llm_flan", flan_env(model_dir, kind, ct2_dir, 1, 10.0), log_dir,
                              f"llm-flan-{kind}-batch1")
                res["ready_off_s"], _ = off.wait_ready(client)
                call_service(openai_client(off.url, token), "llm-flan", PROMPT_FLAN)  # warm-up
                res["off"] = run_levels(args, client, off, headers)
    return res


def report_flan_build(model_dir: Path, build: dict, args) -> None:
    print("## 2. llm-flan: random-weight model of flan-t5-base size, "
          f"{MAX_TOKENS} new tokens, temperature 0\n")
    if build.get("reused"):
        print(f"- model: reused from {model_dir} (--flan-dir; built by an earlier run)")
    else:
        print(f"- model: {build['params'] / 1e6:.1f} M parameters ({build['size_mb']:.0f} MiB fp32 safetensors) in "
              f"{model_dir}; T5Config {T5_BASE}; saved config {build['config']}; lm_head tied to the embeddings at init "
              f"in transformers {pkg('transformers')}: {build['tied_at_init']}, untied after loading the written "
              f"checkpoint: {build['untied_after_load']}; {build['zeroed_rows']} lm_head rows zero (EOS row zero: "
              f"{build['eos_row_zero']})")
        corpus = f", trained on {build['corpus']} of package docs/sources" if "corpus" in build else ""
        print(f"- tokenizer: {build['tokenizer']}{corpus}" + (" (**a token is a byte**)" if args.tokenizer == "byt5"
                                                               else ""))
        print(f"- build (worker process): tokenizer {build['tokenizer_s']:.1f} s, random init {build['init_s']:.1f} s, "
              f"save + lm_head rewrite {build['save_s']:.1f} s; {build['total_s']:.1f} s with the worker's start "
              "and a check load")


def report_flan_backend(r: dict) -> None:
    kind, load = r["kind"], r["load"]
    comp = r["ready"].get("components", {}).get("flan-t5", {})
    desc = ", ".join(f"{k} {v}" for k, v in load["describe"].items() if k != "ct2_dir")
    print(f"\n### {kind}\n")
    if kind == "ctranslate2" and load.get("converted"):
        print(f"- direct: `CTranslate2Backend.load()` converting + loading {load['load_s']:.1f} s "
              f"(conversion ~{load['load_s'] - load['reload_s']:.1f} s), load alone {load['reload_s']:.2f} s; "
              f"model.bin {load['ct2_mb']:.0f} MiB; {desc}")
    else:
        extra = f", torch threads {load['torch_threads']}" if "torch_threads" in load else ""
        print(f"- direct: `{kind}` backend load {load['load_s']:.1f} s{extra}; {desc}")
    print(f"- service: spawn -> /health/ready {r['ready_s']:.1f} s (own process {r['url']}; reports backend "
          f"{comp.get('backend')}, {comp.get('dtype') or comp.get('compute_type')}, batching "
          f"{comp.get('batching')}); HTTP floor {ms(r['floor'])}")
    print(f"- prompt: {short(PROMPT_FLAN, 60)} = {r['direct'][0]['prompt_tokens']} tokens; EOS reached by the "
          f"direct calls: {sum(x['eos'] for x in r['direct'])}")
    print(f"- other processes during these measurements: {foreign_note(r.get('cpu'))}"
          + (f" (waited {r['waited']:.0f} s for a quiet machine first)" if r.get("waited") else "") + "\n")
    print(LATENCY_HEADER)
    print(latency_row(f"direct `{kind}` backend `generate`", r["direct"]))
    print(latency_row("service POST /v1/chat/completions (openai client)", r["service"]))
    print()
    print(overhead_line(r["direct"], r["service"], "`generate` (batcher: token callbacks included)",
                        "HTTP, JSON, prompt building and tokenizing, the 10 ms batching window and thread hops"))
    print(f"Sample answer (random weights): {short(r['service'][0]['text'])}\n")
    ttft_table([("direct: first token callback of `generate`", r["direct"]),
                ("service `stream=True`: first content chunk", r["s_service"])])
    d, s = p([x["ttft"] for x in r["direct"]], 50), p([x["ttft"] for x in r["s_service"]], 50)
    print(f"\nService - direct time to first token (p50): {ms(s - d)} (includes the 10 ms batching window).\n")
    print("Backend batch scaling (one direct `generate` call with N rows of different prompts, 32 tokens each):\n")
    print("| rows | wall | tokens | tok/s | vs 1 row |")
    print("|---|---|---|---|---|")
    base = None
    for b, g in r["scaling"].items():
        rate = sum(g["rows"]) / g["s"]
        base = base or rate
        print(f"| {b} | {ms(g['s'])} | {sum(g['rows'])} | {rate:.1f} | {rate / base:.2f}x |")


def report_batching(results: list[dict], args) -> None:
    print(f"\n## 3. llm-flan throughput with dynamic batching ({args.requests} requests of {MAX_TOKENS} tokens per "
          "client, back to back)\n")
    rows = [r for r in results if "on" in r]
    if not rows:
        print("Not run (--batch-backends is empty or --skip-flan).\n")
        return
    print("| backend | batching | clients | requests ok | tokens | wall | aggregate tok/s | req/s | p50 latency | "
          "p95 latency | mean batch size (/metrics) | generate calls | errors | CPU taken by other processes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for mode, levels in (("on (8, 10 ms)", r["on"]), ("off (1)", r["off"])):
            for lv in levels:
                toks = sum(lv["tokens"])
                mb = lv["rows"] / lv["batches"] if lv["batches"] else float("nan")
                errs = ", ".join(f"{k} x{v}" for k, v in lv["errors"].items()) or "0"
                short_toks = sum(1 for t in lv["tokens"] if t != MAX_TOKENS)
                tok_note = f"{toks}" + (f" ({short_toks} requests < {MAX_TOKENS})" if short_toks else "")
                print(f"| {r['kind']} | {mode} | {lv['clients']} | {len(lv['lat'])} | {tok_note} | {lv['wall']:.2f} s | "
                      f"{toks / lv['wall']:.1f} | {len(lv['lat']) / lv['wall']:.2f} | {ms(p(lv['lat'], 50))} | "
                      f"{ms(p(lv['lat'], 95))} | {mb:.2f} | {lv['batches']:.0f} | {errs} | {foreign_note(lv['cpu'])} |")
    print("\nBatching on vs off (aggregate tok/s ratio; p50 latency ratio):\n")
    print("| backend | clients | tok/s on / off | p50 latency on / off |")
    print("|---|---|---|---|")
    for r in rows:
        for on, off in zip(r["on"], r["off"]):
            ron, roff = sum(on["tokens"]) / on["wall"], sum(off["tokens"]) / off["wall"]
            flag = " (contended, see above)" if max(on["cpu"]["share"], off["cpu"]["share"]) > 0.10 else ""
            print(f"| {r['kind']} | {on['clients']} | {ron / roff:.2f}x{flag} | "
                  f"{p(on['lat'], 50) / p(off['lat'], 50):.2f}x{flag} |")
    print()


# --- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, help="timed calls per side for latency/TTFT (default 6; --quick 3)")
    ap.add_argument("--requests", type=int, help="requests per client in the throughput test (default 3; --quick 2)")
    ap.add_argument("--concurrency", help="client counts of the throughput test (default 1,4,8; --quick 1,8)")
    ap.add_argument("--batch-backends", help="backends of the throughput test, comma-separated: transformers, "
                    "ctranslate2 or none (default both; --quick ctranslate2)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and configurations (about 2.5 min)")
    ap.add_argument("--skip-llm", action="store_true", help="leave out part 1 (llm on llama.cpp)")
    ap.add_argument("--skip-flan", action="store_true", help="leave out parts 2 and 3 (llm-flan)")
    ap.add_argument("--flan-backends", default="transformers,ctranslate2",
                    help="llm-flan backends of part 2 (default transformers,ctranslate2)")
    ap.add_argument("--tokenizer", choices=("spm", "byt5"), default="spm",
                    help="spm: a T5 sentencepiece tokenizer trained here (default); byt5: ByT5Tokenizer (bytes)")
    ap.add_argument("--corpus-lines", type=int, help="text lines for the sentencepiece training "
                    "(default 200000; --quick 80000)")
    ap.add_argument("--flan-dir", help="build the random model here (kept), or reuse the one already there")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each measurement, wait up to S seconds until other processes leave the CPUs "
                    "alone (default 0: do not wait; the CPU they took is reported either way)")
    args = ap.parse_args(argv)
    args.reps = args.reps or (3 if args.quick else 6)
    args.requests = args.requests or (2 if args.quick else 3)
    args.concurrency = [int(x) for x in (args.concurrency or ("1,8" if args.quick else "1,4,8")).split(",") if x]
    backends = [b.strip() for b in args.flan_backends.split(",") if b.strip()]
    batch = args.batch_backends if args.batch_backends is not None else ("ctranslate2" if args.quick
                                                                         else "transformers,ctranslate2")
    args.batch_backends = [b.strip() for b in batch.split(",") if b.strip() and b.strip() != "none"]
    args.corpus_lines = args.corpus_lines or (80_000 if args.quick else 200_000)
    for b in backends + args.batch_backends:
        if b not in ("transformers", "ctranslate2"):
            raise SystemExit(f"unknown llm-flan backend {b!r}")
    backends += [b for b in args.batch_backends if b not in backends]

    from services.llm_flan.settings import Settings as FlanSettings

    started = time.perf_counter()
    load_before = os.getloadavg()
    flan_settings = FlanSettings()
    token = flan_settings.secret_token()
    llm_res = None
    flan_res: list[dict] = []
    build: dict = {}
    model_dir = None
    with ExitStack() as stack, httpx.Client(timeout=600, headers={"Authorization": f"Bearer {token}"} if token
                                            else {}) as client:
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-llm-logs-")))
        if not args.skip_llm:
            llm_res = bench_llm(args, stack, client, log_dir)
        if not args.skip_flan:
            model_dir, build = build_flan_model(args, stack)
            ct2_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-llm-flan-ct2-"))) / "ct2"
            for kind in backends:
                flan_res.append(bench_flan_backend(args, stack, client, log_dir, kind, model_dir, ct2_dir, token,
                                                   flan_settings))
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    print("# LLM benchmark: services vs direct engines, and llm-flan dynamic batching\n")
    print(f"- machine: {cpu}; {len(os.sched_getaffinity(0))} usable CPUs (os.cpu_count {os.cpu_count()}); "
          f"{platform.platform()}; Python {platform.python_version()}")
    print(f"- libraries: llama-cpp-python {pkg('llama-cpp-python')}, transformers {pkg('transformers')}, torch "
          f"{pkg('torch')}, ctranslate2 {pkg('ctranslate2')}, sentencepiece {pkg('sentencepiece')}, openai "
          f"{pkg('openai')}, fastapi {pkg('fastapi')}, uvicorn {pkg('uvicorn')}")
    print(f"- every request: {MAX_TOKENS} new tokens (max_tokens), temperature 0; timed calls per side: {args.reps}; "
          f"throughput: clients {args.concurrency}, {args.requests} requests each, backends "
          f"{args.batch_backends or 'none'}")
    print(f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} "
          "CPUs (well above the benchmark's own use means other work shared the CPUs: times are inflated and noisy)\n")
    if llm_res:
        report_llm(llm_res)
    if not args.skip_flan and model_dir is not None:
        report_flan_build(model_dir, build, args)
        for r in flan_res:
            report_flan_backend(r)
        report_batching(flan_res, args)
    flags = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Total run {elapsed:.0f} s. Reproduce: `{' '.join(['.venv/bin/python scripts/bench_llm.py', flags]).strip()}`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
