#!/usr/bin/env python3
"""Install the project into a virtualenv from the lock (what ``make install`` runs; ``make run`` and
``make test`` call it when the lock or this script changed).

    python3 scripts/install_deps.py [--venv .venv] [--lock lock/all.txt]
    python3 scripts/install_deps.py --print-cmake-args     # llama.cpp's CMake flags for this CPU
    python3 scripts/install_deps.py --print-cmake-args --portable   # for any x86-64-v3 CPU (Docker images)

Steps, each from locked versions with their hashes checked (``--require-hashes``), never from a resolver:

1. the build backends (``lock/build.txt``: setuptools, scikit-build-core);
2. llama-cpp-python, compiled from its hash-checked sdist with `cmake_args` into
   ``.cache/llama-wheels/<version>-<flags digest>/``. pip's own wheel cache is not used for it: pip keys a
   built wheel by the sdist alone, so a wheel built with other flags (e.g. llama.cpp's default
   ``GGML_NATIVE=ON``, which puts weights in AMX buffers on CPUs that have AMX and crashed there) would come
   back silently. A wheel in our folder was built with exactly these flags;
3. everything else in the lock, ``--no-deps`` (the lock is complete; speechbrain's torchaudio is left out on
   purpose: docs/guides/torchaudio-on-cpu.md);
4. the project itself, editable.

The CPU torch wheel (torch 2.13.0+cpu) is not on PyPI: pip finds it through its find-links (this project's
build machines have it there) or ``PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON_VERSION = (3, 11)  # the lock is resolved for it (scripts/lock.py)
LLAMA = "llama-cpp-python"

# Never compiled in, whatever the CPU: the AMX "extra buffer" path crashed llama_decode (SIGSEGV) on a CPU
# with AMX (llama-cpp-python 0.3.36), and AVX-512 code built on one machine dies with "illegal instruction"
# on another. docs/guides/llm-fallback.md ("llama.cpp build") has the measurements behind this choice.
ALWAYS_OFF = ("GGML_NATIVE", "GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16",
              "GGML_AVX_VNNI", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16", "LLAVA_BUILD")
# x86-64-v3 (Haswell, 2013, and every later x86-64 CPU): switched on only where the CPU has all of them.
V3 = {"GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c", "GGML_BMI2": "bmi2"}
X86_64_V3 = frozenset({*V3.values(), "sse4_2"})
"""The flags an image is built for (it runs on machines other than the one that built it)."""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``), empty where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_args(flags: set[str]) -> list[str]:
    """llama.cpp's CMake flags for a CPU with ``flags``: portable x86-64-v3 code where the CPU has AVX2, FMA,
    F16C and BMI2, else SSE4.2 (or plain x86-64) code; AVX-512 and AMX never."""
    args = [f"-D{name}=OFF" for name in ALWAYS_OFF]
    v3 = all(flag in flags for flag in V3.values())
    args += [f"-D{name}={'ON' if v3 else 'OFF'}" for name in V3]
    args.append(f"-DGGML_SSE42={'ON' if v3 or 'sse4_2' in flags else 'OFF'}")
    return args


def lock_entries(text: str) -> dict[str, str]:
    """``{normalised name: the entry's text}`` of a pip requirements file (entries span continued lines)."""
    entries: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", text):
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", block)
        if m:
            entries[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = "\n".join(
                ln for ln in block.splitlines() if not ln.lstrip().startswith("#"))
    return entries


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def pip(py: Path, *args: str, **kw) -> None:
    run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *args], **kw)


def llama_wheel(py: Path, entry: str, extra_cmake: str) -> Path:
    """llama-cpp-python built from the locked sdist with this CPU's flags, in a folder named by the flags."""
    version = re.search(r"==(\S+)", entry).group(1)  # type: ignore[union-attr]
    args = cmake_args(cpu_flags()) + extra_cmake.split()
    digest = hashlib.sha256(" ".join([version, *args]).encode()).hexdigest()[:12]
    folder = ROOT / ".cache" / "llama-wheels" / f"{version}-{digest}"
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    if wheels:
        print(f"llama-cpp-python {version}: using {wheels[-1].relative_to(ROOT)} (built with {' '.join(args)})")
        return wheels[-1]
    folder.mkdir(parents=True, exist_ok=True)
    print(f"llama-cpp-python {version}: compiling llama.cpp (a few minutes on 2 cores) with {' '.join(args)}",
          flush=True)
    env = {**os.environ, "CMAKE_ARGS": " ".join(args),
           "CMAKE_BUILD_PARALLEL_LEVEL": os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))}
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
        req.write(entry + "\n")
        req.flush()
        run([str(py), "-m", "pip", "wheel", "--disable-pip-version-check", "--no-cache-dir", "--no-deps",
             "--no-build-isolation", "--no-binary", LLAMA, "--require-hashes", "-r", req.name, "-w", str(folder)],
            env=env)
    (folder / "CMAKE_ARGS").write_text(" ".join(args) + "\n")
    return sorted(folder.glob("llama_cpp_python-*.whl"))[-1]


def install(venv_dir: Path, lock: Path, extra_cmake: str) -> None:
    if sys.version_info[:2] != PYTHON_VERSION:
        raise SystemExit(f"Python {sys.version_info[0]}.{sys.version_info[1]} runs this script, but lock/ is "
                         f"resolved for {PYTHON_VERSION[0]}.{PYTHON_VERSION[1]}: run it with python3.11 "
                         "(make PYTHON=python3.11 ...)")
    py = venv_dir / "bin" / "python"
    if not py.exists():
        venv.create(venv_dir, with_pip=True)
    pip(py, "--no-deps", "--require-hashes", "-r", str(ROOT / "lock" / "build.txt"))
    entries = lock_entries(lock.read_text())
    rest = {name: e for name, e in entries.items() if name != LLAMA}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="lock-rest-") as req:
        req.write("\n".join(rest.values()) + "\n")
        req.flush()
        try:
            pip(py, "--no-deps", "--require-hashes", "-r", req.name)
        except subprocess.CalledProcessError:
            if "torch" in rest and not _has_cpu_torch(py):
                print("\nThe CPU build of torch (torch==2.13.0+cpu) is not on PyPI. Point pip at it, e.g.\n"
                      "  PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make install\n", file=sys.stderr)
            raise
    if LLAMA in entries:
        pip(py, "--no-deps", "--force-reinstall", str(llama_wheel(py, entries[LLAMA], extra_cmake)))
    pip(py, "--no-deps", "--no-build-isolation", "-e", str(ROOT))


def _has_cpu_torch(py: Path) -> bool:
    return subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv")
    ap.add_argument("--lock", type=Path, default=ROOT / "lock" / "all.txt")
    ap.add_argument("--print-cmake-args", action="store_true", help="print llama.cpp's CMake flags for this CPU")
    ap.add_argument("--portable", action="store_true", help="with --print-cmake-args: for any x86-64-v3 CPU")
    args = ap.parse_args()
    extra = os.environ.get("LLAMA_CMAKE_ARGS", "")  # more flags, appended (they win over ours)
    if args.print_cmake_args:
        print(" ".join(cmake_args(set(X86_64_V3) if args.portable else cpu_flags()) + extra.split()))
        return 0
    install(args.venv, args.lock, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
