#!/usr/bin/env python3
"""Does denoising help transcription? Signal metrics and stt word error rate, raw vs denoised, per engine.

    python scripts/eval_denoise.py                   # full run (about 5.5 min on a 2-core CPU)
    python scripts/eval_denoise.py --limit 4         # quick look: 4 files per set
    python scripts/eval_denoise.py --seed 1          # other noise offsets (the mixed WER figures move)
    python scripts/eval_denoise.py --every 1 --draws 1   # mixed set from all 46 clean utterances (~10 min)
    python scripts/eval_denoise.py --metricgan-model ~/models/metricgan-plus-voicebank   # also MetricGAN+
    python scripts/eval_denoise.py --dfn-atten-lim 6 12 24   # DeepFilterNet3 attenuation limits to compare
    python scripts/eval_denoise.py --dfn-atten-lim   # only the configured DeepFilterNet3 (no variant)
    DENOISE_SKIP_ABOVE_SNR_DB=200 python scripts/eval_denoise.py   # no skip row (the policy off)
    STT_BEAM_SIZE=1 DEEPFILTERNET_POST_FILTER_BETA=0.02 python scripts/eval_denoise.py   # any service setting

Two sets, from ../shared/eval (see A/SOURCES.md and B/SOURCES.md):

- ``vbd``: the 23 VoiceBank-DEMAND pairs of A (``noisy/vbd_*_noisy.wav`` against ``clean/vbd_*_clean.wav``,
  the same recording with real DEMAND noise mixed in at 0.8 to 16.8 dB).
- ``mixed``: every ``--every``-th clean utterance of A (sorted by name; 16 of 46 by default, six corpora),
  each mixed ``--draws`` times (default 2) with a noise of B (cycling through the 13 files, another file
  at each draw; resampled to the speech's rate, looped or cut to its length from an offset drawn with
  ``--seed``) scaled to exactly 10, 5 and 0 dB SNR (power over the whole clip, silences included); a clip
  keeps its noise and offset at every level. The same utterances without noise form the ``clean``
  condition: what preprocessing does to clean speech.
  When a mixture would clip, mixture and clean reference are scaled down together (SNR unchanged).

Every condition's audio goes to stt as it is ("raw") and through each denoiser. Signal metrics compare
the result with the clean reference at 16 kHz (mean over files): SNR, scale-invariant SDR, and PESQ
(ITU-T P.862.2 wide band) and STOI when the ``pesq`` / ``pystoi`` packages are installed (they are
optional, in the ``eval`` extra: which ``make install`` installs from ``lock/all.txt``). WER is pooled over
the words of a condition, with eval_stt.py's normalisation on both sides; ΔWER is the denoised WER minus
the raw WER in percentage points. The clean reference's WER is the ceiling.

The engines are used in-process, as the services build them from their settings (environment and
``.env.service`` files): ``DeepFilterNetEngine`` with ``DEEPFILTERNET_ATTEN_LIM_DB`` /
``DEEPFILTERNET_POST_FILTER_BETA`` (plus, by default, a variant limited to 12 dB of attenuation for
comparison: ``--dfn-atten-lim``), ``MetricGanEngine`` with ``METRICGAN_*`` (evaluated only when its weights
are on disk, never downloaded and never a randomly initialised model), and stt's ``WhisperEngine`` with
``STT_*``. The denoised audio is rounded to 16-bit PCM as ``POST /denoise`` returns it. The HTTP path
(stt -> audio-preprocessor -> stt, with ``ENABLE_PREPROCESSING=true``) is covered by the tests, not here.

The service's default pipeline is a row of its own: the configured engine, except for recordings whose
estimated SNR (services/audio_preprocessor/snr.py) is at least ``DENOISE_SKIP_ABOVE_SNR_DB``, which stay raw
(as ``POST /denoise`` returns them); its hypotheses are the engine's or the raw ones per file, so it costs no
extra transcription.

The verdict section prints its rule with the figures. On 150-200 words per condition a WER difference of a
few words is within what another ``--seed`` (other noise offsets) changes, so each ΔWER comes with a
paired-bootstrap 95% interval over files, and the rule turns preprocessing on only when the improvement's
interval lies below zero. This is an evaluation, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import jiwer  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
from eval_data import require_eval_data  # noqa: E402
from eval_stt import normalise  # noqa: E402  (one normalisation for every WER figure)

from services.common.audio import AudioSegment  # noqa: E402

DEFAULT_EVAL = ROOT.parent / "shared" / "eval"
METRIC_RATE = 16_000
SNR_LEVELS_DB = (10.0, 5.0, 0.0)
NEUTRAL_POINTS = 0.5
"""|ΔWER| below this many percentage points counts as neutral."""
NOISE_STEP = 5
"""Noise draw k of utterance i uses noise file (i + k * NOISE_STEP) mod 13: another noise at each draw."""
BOOTSTRAP_ROUNDS = 2000
BOOTSTRAP_SEED = 12345
FEW_WORDS = 2
"""A difference of this many word errors or fewer is flagged "within noise", and does not count as hurting
clean-ish speech in the recommendation rule (one word is more than NEUTRAL_POINTS on sets of 150-200 words)."""

try:  # optional: not project dependencies
    from pesq import pesq as _pesq
except ImportError:  # pragma: no cover - depends on the environment
    _pesq = None
try:
    from pystoi import stoi as _stoi
except ImportError:  # pragma: no cover
    _stoi = None


# --- data ------------------------------------------------------------------------------------------


@dataclass
class Clip:
    name: str
    ref: str
    """Normalised reference text."""
    clean: AudioSegment
    """Clean reference signal, at the rate of ``audio`` and aligned with it."""
    audio: AudioSegment
    """What is sent to the pipeline (noisy, or the clean file itself)."""
    clean_file: Path
    noise: str = ""


@dataclass
class Condition:
    key: str
    title: str
    clips: list[Clip]
    noisy: bool
    """False: the input is clean speech (metrics against itself are meaningless)."""


@dataclass
class Result:
    """One pipeline (raw or an engine) on one condition: per-clip metrics and hypotheses."""

    snr: list[float] = field(default_factory=list)
    sisdr: list[float] = field(default_factory=list)
    pesq: list[float] = field(default_factory=list)
    stoi: list[float] = field(default_factory=list)
    hyps: list[str] = field(default_factory=list)

    def add_metrics(self, m: dict[str, float]) -> None:
        self.snr.append(m["snr"])
        self.sisdr.append(m["sisdr"])
        self.pesq.append(m["pesq"])
        self.stoi.append(m["stoi"])


def read_audio(path: Path) -> AudioSegment:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return AudioSegment(data, rate).to_mono()


def pcm16(seg: AudioSegment) -> AudioSegment:
    """Rounded to 16-bit PCM, as a WAV upload or a ``POST /denoise`` answer carries it."""
    return AudioSegment.from_pcm16(seg.to_pcm16(), seg.sample_rate, seg.channels)


def load_references(eval_a: Path) -> dict[str, str]:
    rows = csv.DictReader((eval_a / "transcripts.tsv").open(encoding="utf-8"), delimiter="\t")
    return {row["filename"]: row["reference"] for row in rows}


def vbd_condition(eval_a: Path, refs: dict[str, str], limit: int | None) -> Condition:
    clips = []
    for noisy_path in sorted((eval_a / "noisy").glob("vbd_*_noisy.wav")):
        clean_path = eval_a / "clean" / noisy_path.name.replace("_noisy", "_clean")
        noisy, clean = read_audio(noisy_path), read_audio(clean_path)
        if noisy.sample_rate != clean.sample_rate:
            raise SystemExit(f"{noisy_path.name} and {clean_path.name} have different rates")
        n = min(noisy.frames, clean.frames)
        clips.append(Clip(noisy_path.stem, normalise(refs[f"noisy/{noisy_path.name}"]),
                          AudioSegment(clean.samples[:n], clean.sample_rate),
                          AudioSegment(noisy.samples[:n], noisy.sample_rate), clean_path))
    clips = clips[:limit] if limit else clips
    return Condition("vbd", "vbd: VoiceBank-DEMAND noisy/clean pairs (real DEMAND noise, 0.8-16.8 dB)", clips, True)


def mixed_conditions(eval_dir: Path, refs: dict[str, str], every: int, draws: int, seed: int,
                     limit: int | None) -> list[Condition]:
    eval_a, eval_b = eval_dir / "A", eval_dir / "B"
    speech_files = sorted((eval_a / "clean").glob("*.wav"))[::every]
    speech_files = speech_files[:limit] if limit else speech_files
    noise_files = sorted(eval_b.glob("*.wav"))
    if not noise_files:
        raise SystemExit(f"no noise files in {eval_b}")
    rng = np.random.default_rng(seed)
    speech = {path: read_audio(path) for path in speech_files}
    base: list[tuple[Path, str, np.ndarray, str]] = []  # (speech file, clip name, noise stretch, noise name)
    for k in range(draws):
        for i, path in enumerate(speech_files):
            noise_path = noise_files[(i + k * NOISE_STEP) % len(noise_files)]
            noise = read_audio(noise_path).resample(speech[path].sample_rate).mono_1d()
            n = speech[path].frames
            for _ in range(100):  # an offset whose stretch is not digital silence
                offset = int(rng.integers(len(noise)))
                stretch = np.take(noise, np.arange(offset, offset + n), mode="wrap")
                if np.mean(stretch.astype(np.float64) ** 2) > 1e-12:
                    break
            else:
                raise SystemExit(f"{noise_path.name} is silent")
            base.append((path, path.stem + (f"#{k + 1}" if draws > 1 else ""), stretch, noise_path.stem))

    clean_title = "clean: the mixed set's utterances without noise (does denoising harm clean speech?)"
    conditions = [Condition("clean", clean_title,
                            [Clip(p.stem, normalise(refs[f"clean/{p.name}"]), sp, sp, p) for p, sp in speech.items()],
                            False)]
    for level in SNR_LEVELS_DB:
        clips = []
        for path, name, stretch, noise_name in base:
            rate = speech[path].sample_rate
            s = speech[path].mono_1d().astype(np.float64)
            n = stretch.astype(np.float64)
            gain = math.sqrt(np.mean(s**2) / (np.mean(n**2) * 10 ** (level / 10)))
            mix = s + gain * n
            scale = min(1.0, 0.99 / max(np.max(np.abs(mix)), 1e-9))  # no clipping; SNR unchanged
            clean = AudioSegment((s * scale).astype(np.float32), rate)
            noisy = pcm16(AudioSegment((mix * scale).astype(np.float32), rate))
            clips.append(Clip(name, normalise(refs[f"clean/{path.name}"]), clean, noisy, path, noise_name))
        conditions.append(Condition(f"mixed {level:g} dB",
                                    f"mixed {level:g} dB: clean A speech + B noise at exactly {level:g} dB SNR",
                                    clips, True))
    return conditions


# --- metrics ---------------------------------------------------------------------------------------


def _at_metric_rate(seg: AudioSegment) -> np.ndarray:
    return seg.resample(METRIC_RATE).mono_1d().astype(np.float64)


def signal_metrics(clean: AudioSegment, est: AudioSegment) -> dict[str, float]:
    """SNR, SI-SDR (dB), PESQ wb and STOI of ``est`` against ``clean``, both taken to 16 kHz."""
    c, e = _at_metric_rate(clean), _at_metric_rate(est)
    n = min(len(c), len(e))
    c, e = c[:n], e[:n]
    eps = 1e-12
    snr = 10 * math.log10(np.sum(c**2) / max(np.sum((c - e) ** 2), eps))
    c0, e0 = c - c.mean(), e - e.mean()
    target = (np.dot(e0, c0) / max(np.dot(c0, c0), eps)) * c0
    sisdr = 10 * math.log10(max(np.sum(target**2), eps) / max(np.sum((e0 - target) ** 2), eps))
    out = {"snr": snr, "sisdr": sisdr, "pesq": math.nan, "stoi": math.nan}
    if _pesq is not None:
        try:
            out["pesq"] = float(_pesq(METRIC_RATE, c, e, "wb"))
        except Exception:  # no utterance found, too short
            pass
    if _stoi is not None:
        try:
            out["stoi"] = float(_stoi(c, e, METRIC_RATE, extended=False))
        except Exception:
            pass
    return out


def wer(refs: list[str], hyps: list[str]) -> float:
    return float(jiwer.wer(refs, hyps))


def word_errors(ref: str, hyp: str) -> int:
    """Substitutions + deletions + insertions (pooled WER = their sum over the sum of reference words)."""
    o = jiwer.process_words(ref, hyp)
    return int(o.substitutions + o.deletions + o.insertions)


def bootstrap_ci(parts: list[tuple[np.ndarray, np.ndarray]], seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% interval of the mean over ``parts`` of pooled ΔWER (points), files resampled within each part.

    A part is ``(Δ word errors per file, reference words per file)`` of one condition."""
    rng = np.random.default_rng(seed)
    total = np.zeros(BOOTSTRAP_ROUNDS)
    for diff, words in parts:
        idx = rng.integers(len(diff), size=(BOOTSTRAP_ROUNDS, len(diff)))
        total += 100 * diff[idx].sum(axis=1) / words[idx].sum(axis=1)
    lo, hi = np.percentile(total / len(parts), [2.5, 97.5])
    return float(lo), float(hi)


def mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


# --- engines ---------------------------------------------------------------------------------------


def build_engines(args: argparse.Namespace) -> tuple[list[tuple[str, Any]], list[str]]:
    """``[(label, engine)]`` started, and notes on engines left out."""
    from services.audio_preprocessor.deepfilternet import NO_ATTEN_LIMIT_DB, DeepFilterNetEngine
    from services.audio_preprocessor.settings import Settings as PreSettings

    pre = PreSettings()
    engines: list[tuple[str, Any]] = []
    notes: list[str] = []
    dfn = DeepFilterNetEngine(atten_lim_db=pre.deepfilternet_atten_lim_db,
                              post_filter_beta=pre.deepfilternet_post_filter_beta)
    engines.append(("deepfilternet", dfn))
    configured = min(pre.deepfilternet_atten_lim_db, NO_ATTEN_LIMIT_DB)
    for lim in dict.fromkeys(min(x, NO_ATTEN_LIMIT_DB) for x in args.dfn_atten_lim or []):
        if lim == configured:
            continue
        engines.append((f"deepfilternet atten_lim={lim:g}dB",
                        DeepFilterNetEngine(atten_lim_db=lim, post_filter_beta=pre.deepfilternet_post_filter_beta)))

    from services.audio_preprocessor.metricgan import (
        MetricGanEngine,
        metricgan_weights_available,
        speechbrain_installed,
    )

    model = args.metricgan_model or pre.metricgan_model_path
    savedir = None if args.metricgan_model else pre.metricgan_savedir
    if not speechbrain_installed():
        notes.append("metricgan: speechbrain is not installed, not evaluated")
    elif not metricgan_weights_available(model, savedir):
        notes.append(f"metricgan: weights not present (METRICGAN_MODEL_PATH={model}), not evaluated")
    else:
        engines.append(("metricgan", MetricGanEngine(model, savedir=savedir, batch_size=pre.metricgan_batch_size,
                                                     allow_download=False)))
    for _, engine in engines:
        asyncio.run(engine.start())
    return engines, notes


# --- formatting ------------------------------------------------------------------------------------


def fmt(value: float, spec: str = ".2f", signed: bool = False) -> str:
    if not math.isfinite(value):
        return "—"
    return format(value, ("+" if signed else "") + spec)


def verdict(delta_points: float) -> str:
    if delta_points <= -NEUTRAL_POINTS:
        return "improved"
    if delta_points >= NEUTRAL_POINTS:
        return "hurt"
    return "neutral"


# --- main ------------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL, help="folder holding A/ and B/")
    p.add_argument("--limit", type=int, help="at most N files per set (quick run)")
    p.add_argument("--every", type=int, default=3, help="mixed set: every K-th clean utterance of A (default 3)")
    p.add_argument("--draws", type=int, default=2,
                   help="mixed set: noise draws per utterance, each another noise file and offset (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise offsets (default 0)")
    p.add_argument("--metricgan-model", help="MetricGAN+ model dir (hyperparams.yaml + enhance_model.ckpt) or "
                                             "cached hub id; default METRICGAN_MODEL_PATH")
    p.add_argument("--dfn-atten-lim", type=float, nargs="*", metavar="DB", default=[12.0],
                   help="also evaluate DeepFilterNet3 with these attenuation limits in dB (default: 12; the "
                        "option without a value: none; the configured DEEPFILTERNET_ATTEN_LIM_DB is always in)")
    p.add_argument("--show-files", action="store_true", help="print per-file WER, raw vs each engine")
    args = p.parse_args()
    if args.every < 1 or args.draws < 1:
        p.error("--every and --draws must be >= 1")
    eval_a = args.eval_dir / "A"
    require_eval_data(eval_a / "transcripts.tsv", eval_a / "clean", eval_a / "noisy", args.eval_dir / "B", option="--eval-dir")

    t_start = time.perf_counter()
    from services.stt.engine import TranscriptionRequest, WhisperEngine
    from services.stt.settings import Settings as SttSettings

    stt_settings = SttSettings()
    stt = WhisperEngine(stt_settings)
    asyncio.run(stt.start())
    engines, notes = build_engines(args)
    t_loaded = time.perf_counter()

    refs = load_references(args.eval_dir / "A")
    conditions = [vbd_condition(args.eval_dir / "A", refs, args.limit),
                  *mixed_conditions(args.eval_dir, refs, args.every, args.draws, args.seed, args.limit)]

    timings: dict[str, float] = defaultdict(float)
    audio_s: dict[str, float] = defaultdict(float)

    def transcribe(seg: AudioSegment) -> str:
        t0 = time.perf_counter()
        text = stt.transcribe(TranscriptionRequest(audio=seg, language="en")).text
        timings["stt"] += time.perf_counter() - t0
        audio_s["stt"] += seg.duration_s
        return normalise(text)

    ceiling: dict[Path, str] = {}

    def clean_hyp(clip: Clip) -> str:
        if clip.clean_file not in ceiling:
            ceiling[clip.clean_file] = transcribe(read_audio(clip.clean_file))
        return ceiling[clip.clean_file]

    from services.audio_preprocessor.settings import Settings as PreSettings
    from services.audio_preprocessor.snr import estimate_snr_db

    pre_settings = PreSettings()
    policy_label = (f"{engines[0][0]} + skip above {pre_settings.denoise_skip_above_snr_db:g} dB est. SNR (default)"
                    if engines and pre_settings.denoise_skip_above_snr_db < 200 else "")
    policy_skips: dict[str, tuple[int, int]] = {}
    results: dict[str, dict[str, Result]] = {}
    for cond in conditions:
        rows: dict[str, Result] = {}
        if cond.noisy:  # for clean input the raw row is the ceiling
            rows["clean reference (ceiling)"] = Result(hyps=[clean_hyp(c) for c in cond.clips])
        raw = Result()
        for clip in cond.clips:
            if cond.noisy:
                t0 = time.perf_counter()
                m = signal_metrics(clip.clean, clip.audio)
                timings["metrics"] += time.perf_counter() - t0
                raw.add_metrics(m)
                raw.hyps.append(transcribe(clip.audio))
            else:
                raw.hyps.append(clean_hyp(clip))
        rows["raw (clean input)" if not cond.noisy else "raw (noisy)"] = raw
        for label, engine in engines:
            res = Result()
            for clip in cond.clips:
                t0 = time.perf_counter()
                out = pcm16(engine.denoise(clip.audio))
                timings[label] += time.perf_counter() - t0
                audio_s[label] += clip.audio.duration_s
                t0 = time.perf_counter()
                m = signal_metrics(clip.clean, out)
                timings["metrics"] += time.perf_counter() - t0
                res.add_metrics(m)
                res.hyps.append(transcribe(out))
            rows[label] = res
        if policy_label and engines:  # the service's default: the configured engine, except above the SNR limit
            engine_rows = rows[engines[0][0]]
            policy, skipped = Result(), 0
            for i, clip in enumerate(cond.clips):
                est = estimate_snr_db(clip.audio.samples, clip.audio.sample_rate)
                use_raw = est is not None and est >= pre_settings.denoise_skip_above_snr_db
                skipped += use_raw
                source = raw if use_raw and cond.noisy else engine_rows
                policy.hyps.append(raw.hyps[i] if use_raw else engine_rows.hyps[i])
                policy.add_metrics({k: getattr(source, k)[i] if cond.noisy or not use_raw else math.nan
                                    for k in ("snr", "sisdr", "pesq", "stoi")})
            rows[policy_label] = policy
            policy_skips[cond.key] = (skipped, len(cond.clips))
        results[cond.key] = rows
        print(f"  done: {cond.key} ({len(cond.clips)} files, {time.perf_counter() - t_start:.0f} s)",
              file=sys.stderr, flush=True)

    for _, engine in engines:
        asyncio.run(engine.aclose())
    asyncio.run(stt.aclose())

    # --- report
    engine_labels = [label for label, _ in engines] + ([policy_label] if policy_label else [])
    stt_desc = f"{stt_settings.stt_model} beam={stt_settings.stt_beam_size} vad={stt_settings.stt_vad_filter}"
    print(f"\n# Denoising vs transcription ({args.eval_dir})\n")
    print(f"stt: {stt_desc} ({stt.device}/{stt.compute_type}); engines: "
          + ", ".join(f"{label} ({e.describe().get('model', '')})" for label, e in engines))
    if engines:
        dfn = engines[0][1]
        print(f"deepfilternet settings: atten_lim_db={dfn.atten_lim_db:g}, post_filter_beta={dfn.post_filter_beta:g}")
    for note in notes:
        print(note)
    print(f"PESQ: {'pesq package (wb, 16 kHz)' if _pesq else 'not installed, not computed'}; "
          f"STOI: {'pystoi package (16 kHz)' if _stoi else 'not installed, not computed'}")
    print(f"mixed set: 1 in {args.every} of A's clean utterances (sorted by name), {args.draws} noise draw(s) per "
          f"utterance, noise offsets from seed {args.seed}")

    deltas: dict[str, dict[str, float]] = defaultdict(dict)  # engine -> condition -> ΔWER points
    delta_errors: dict[str, dict[str, int]] = defaultdict(dict)  # engine -> condition -> Δ word errors
    cond_words: dict[str, int] = {}
    file_parts: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = defaultdict(dict)  # engine -> cond -> part
    sisdr_gain: dict[str, dict[str, float]] = defaultdict(dict)
    for cond in conditions:
        rows = results[cond.key]
        ref_list = [c.ref for c in cond.clips]
        words = sum(len(r.split()) for r in ref_list)
        cond_words[cond.key] = words
        dur = sum(c.audio.duration_s for c in cond.clips)
        raw_label = "raw (noisy)" if cond.noisy else "raw (clean input)"
        raw = rows[raw_label]
        raw_wer = wer(ref_list, raw.hyps)
        file_words = np.array([len(r.split()) for r in ref_list])
        raw_errors = np.array([word_errors(r, h) for r, h in zip(ref_list, raw.hyps)])
        print(f"\n## {cond.title}\n")
        utterances = len({c.clean_file for c in cond.clips})
        what = f"{len(cond.clips)} clips of {utterances} utterances" if utterances != len(cond.clips) else \
            f"{len(cond.clips)} files"
        print(f"{what}, {dur:.1f} s, {words} reference words "
              f"(1 word = {100 / words:.2f} WER points)\n")
        print("| pipeline | SNR dB | SNR gain | SI-SDR dB | SI-SDR gain | PESQ wb | STOI | WER | ΔWER (points) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, res in rows.items():
            w = wer(ref_list, res.hyps)
            is_engine = label in engine_labels
            snr_gain = mean([a - b for a, b in zip(res.snr, raw.snr)]) if is_engine and cond.noisy else math.nan
            sdr_gain = mean([a - b for a, b in zip(res.sisdr, raw.sisdr)]) if is_engine and cond.noisy else math.nan
            delta = 100 * (w - raw_wer) if is_engine else math.nan
            if is_engine:
                errors = np.array([word_errors(r, h) for r, h in zip(ref_list, res.hyps)])
                file_parts[label][cond.key] = (errors - raw_errors, file_words)
                deltas[label][cond.key] = delta
                delta_errors[label][cond.key] = round(w * words) - round(raw_wer * words)
                sisdr_gain[label][cond.key] = sdr_gain
            print(f"| {label} | {fmt(mean(res.snr))} | {fmt(snr_gain, signed=True)} | {fmt(mean(res.sisdr))} | "
                  f"{fmt(sdr_gain, signed=True)} | {fmt(mean(res.pesq))} | {fmt(mean(res.stoi), '.3f')} | "
                  f"{100 * w:.1f}% | {fmt(delta, '.1f', signed=True)} |")
        if cond.key in policy_skips:
            n_skip, n_all = policy_skips[cond.key]
            print(f"\n{policy_label}: {n_skip} of {n_all} recordings estimated clean enough to skip (raw audio).")
        if not cond.noisy:
            print("\nSNR / SI-SDR / PESQ / STOI of an engine row here: its output against the clean input "
                  "(how much it alters clean speech).")
        if args.show_files:
            print("\n| file | noise | raw WER | " + " | ".join(engine_labels) + " |")
            print("|---|---|---|" + "---|" * len(engine_labels))
            for i, clip in enumerate(cond.clips):
                cells = [f"{wer([clip.ref], [rows[e].hyps[i]]):.2f}" for e in engine_labels]
                print(f"| {clip.name} | {clip.noise or '—'} | {wer([clip.ref], [raw.hyps[i]]):.2f} | "
                      + " | ".join(cells) + " |")

    mixed_keys = [c.key for c in conditions if c.key.startswith("mixed")]
    mixed_conds = [c for c in conditions if c.key in mixed_keys]
    if mixed_conds:
        print(f"\n## mixed, by noise (pooled over {', '.join(f'{x:g}' for x in SNR_LEVELS_DB)} dB; few words "
              "per noise: a rough guide only)\n")
        print("| noise | files x levels | words | raw WER | "
              + " | ".join(f"{e} WER (Δ)" for e in engine_labels) + " |")
        print("|---|---|---|---|" + "---|" * len(engine_labels))
        by_noise: dict[str, dict[str, tuple[list[str], list[str]]]] = defaultdict(lambda: defaultdict(lambda: ([], [])))
        for cond in mixed_conds:
            rows = results[cond.key]
            for i, clip in enumerate(cond.clips):
                for label in ["raw (noisy)", *engine_labels]:
                    r, h = by_noise[clip.noise][label]
                    r.append(clip.ref)
                    h.append(rows[label].hyps[i])
        for noise in sorted(by_noise):
            r, h = by_noise[noise]["raw (noisy)"]
            raw_w = wer(r, h)
            cells = []
            for e in engine_labels:
                er, eh = by_noise[noise][e]
                ew = wer(er, eh)
                cells.append(f"{100 * ew:.1f}% ({100 * (ew - raw_w):+.1f})")
            print(f"| {noise} | {len(r)} | {sum(len(x.split()) for x in r)} | {100 * raw_w:.1f}% | "
                  + " | ".join(cells) + " |")

    # --- verdict
    noisy_keys = [c.key for c in conditions if c.noisy]
    cleanish_keys = [k for k in ("clean", f"mixed {max(SNR_LEVELS_DB):g} dB") if k in results]
    print("\n## Verdict\n")
    print(f"ΔWER = WER(denoised) - WER(raw), percentage points: improved if ΔWER <= -{NEUTRAL_POINTS:g}, "
          f"neutral if |ΔWER| < {NEUTRAL_POINTS:g}, hurt if ΔWER >= +{NEUTRAL_POINTS:g}. [95% interval]: paired "
          f"bootstrap over the files of the condition ({BOOTSTRAP_ROUNDS} rounds).\n")
    print("| condition | "
          + " | ".join(f"{e}: ΔWER [95%] = Δ word errors, verdict (SI-SDR gain)" for e in engine_labels) + " |")
    print("|---|" + "---|" * len(engine_labels))
    for cond in conditions:
        cells: list[str] = []
        for e in engine_labels:
            d = deltas[e][cond.key]
            g = sisdr_gain[e][cond.key]
            extra = f" ({g:+.1f} dB)" if math.isfinite(g) else ""
            few = " (within noise)" if abs(delta_errors[e][cond.key]) <= FEW_WORDS else ""
            lo, hi = bootstrap_ci([file_parts[e][cond.key]])
            cells.append(f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}] = {delta_errors[e][cond.key]:+d} errors, "
                         f"{verdict(d)}{few}{extra}")
        print(f"| {cond.key} | " + " | ".join(cells) + " |")

    lo_w, hi_w = min(cond_words.values()), max(cond_words.values())
    print(f"\n\"within noise\": a difference of {FEW_WORDS} word errors or fewer. With "
          f"{lo_w}-{hi_w} reference words per condition one word is {100 / hi_w:.2f}-{100 / lo_w:.2f} points"
          + (f", more than the {NEUTRAL_POINTS:g}-point neutral band: such a verdict is no evidence either way"
             if 100 / hi_w >= NEUTRAL_POINTS else "")
          + (" (--every 1 triples the mixed set)." if args.every > 1 else "."))
    print("Another --seed (other noise offsets) moves the mixed conditions' ΔWER by several points; the "
          "intervals resample clips, which covers the variation between noise draws only in part.")
    print(f"\nRule for the default of ENABLE_PREPROCESSING: on, with engine E, only if (a) E's mean ΔWER over the "
          f"noisy conditions ({', '.join(noisy_keys)}; unweighted) is <= -{NEUTRAL_POINTS:g} points with its 95% "
          f"interval below 0 (not a sampling accident) and (b) E "
          f"hurts none of the clean-ish conditions ({', '.join(cleanish_keys)}), hurting meaning ΔWER >= "
          f"+{NEUTRAL_POINTS:g} points and more than {FEW_WORDS} extra word errors (a hurt \"within noise\" does "
          "not count; the strict reading, where it does, is shown too); among engines passing both, the lowest "
          "mean ΔWER. Otherwise off.\n")
    passing: list[tuple[float, str]] = []
    strict_fails: list[str] = []
    for e in engine_labels:
        avg = float(np.mean([deltas[e][k] for k in noisy_keys]))
        ci_lo, ci_hi = bootstrap_ci([file_parts[e][k] for k in noisy_keys])
        strict_hurt = [k for k in cleanish_keys if deltas[e][k] >= NEUTRAL_POINTS]
        hurt = [k for k in strict_hurt if delta_errors[e][k] > FEW_WORDS]
        ok_a, ok_b = avg <= -NEUTRAL_POINTS and ci_hi < 0, not hurt
        strict = ""
        if strict_hurt and not hurt:
            strict = f"; strict reading: fails b on {', '.join(strict_hurt)}"
            if ok_a:
                strict_fails.append(e)
        print(f"- {e}: mean ΔWER over noisy conditions {avg:+.2f} points [{ci_lo:+.2f}, {ci_hi:+.2f}] "
              f"({'passes' if ok_a else 'fails'} a); "
              f"clean-ish: " + ", ".join(f"{k} {deltas[e][k]:+.1f} ({delta_errors[e][k]:+d} errors)"
                                         for k in cleanish_keys)
              + f" ({'passes' if ok_b else 'fails'} b{': hurts ' + ', '.join(hurt) if hurt else ''}{strict})")
        if ok_a and ok_b:
            passing.append((avg, e))

    def recommendation(candidates: list[tuple[float, str]]) -> str:
        if not candidates:
            return "ENABLE_PREPROCESSING=false (no evaluated engine meets the rule)"
        best = min(candidates)[1]
        setting = "DENOISE_ENGINE=" + best.split()[0]
        if " atten_lim=" in best:
            setting += f" DEEPFILTERNET_ATTEN_LIM_DB={best.split('=')[1].removesuffix('dB')}"
        return f"ENABLE_PREPROCESSING=true with {setting}"

    print(f"\n**Recommendation: {recommendation(passing)}**")
    strict = recommendation([c for c in passing if c[1] not in strict_fails])
    if strict != recommendation(passing):
        print(f"Strict reading (a hurt within noise counts too): {strict}")
    if passing:
        print("Set the engine explicitly: DENOISE_ENGINE=auto switches to MetricGAN+ as soon as its weights appear.")
    if any(n.startswith("metricgan") for n in notes):
        print("MetricGAN+ was not evaluated; DENOISE_ENGINE=auto would pick it once its weights are present, so "
              "run this script with --metricgan-model before relying on auto with preprocessing on.")

    total = time.perf_counter() - t_start
    parts = [f"model loading {t_loaded - t_start:.1f} s"]
    parts += [f"{k} {timings[k]:.1f} s for {audio_s[k]:.0f} s of audio (RTF {timings[k] / max(audio_s[k], 1e-9):.3f})"
              for k in ["stt", *(label for label, _ in engines)]]
    parts.append(f"metrics {timings['metrics']:.1f} s")
    print(f"\nruntime {total:.0f} s: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
