#!/usr/bin/env python3
"""Regenerate the lock files (``make lock``): every Python dependency, pinned with hashes.

    python scripts/lock.py                      # re-resolve, keeping every pin that still fits
    python scripts/lock.py --upgrade-package X  # move X (and what it needs) to its newest allowed version
    python scripts/lock.py --upgrade            # move everything to the newest allowed versions

Inputs: ``pyproject.toml`` (what each service needs, as extras), ``constraints.txt`` (deliberate pins: CPU
torch, llama-cpp-python, speechbrain), ``lock/build.in`` (build backends), ``lock/preprocess.in``
(speechbrain) and ``lock/overrides.txt`` (torchaudio never). Outputs:

- ``lock/all.txt``: everything (all extras, build backends, speechbrain); the Makefile and .ci/run install it.
- ``lock/build.txt``: the build backends alone, installed first (scripts/install_deps.py, the Dockerfiles).
- ``lock/<extra>.txt``: one service's extra plus the build backends, resolved with ``lock/all.txt`` as
  constraints, so every file pins the same versions; each Dockerfile installs its own.

The resolution is for CPython 3.11 on x86-64 Linux (manylinux_2_28), the Python of the Dockerfiles and of
``make`` (scripts/install_deps.py refuses another). uv resolves against PyPI; the CPU torch wheel is found
through ``PIP_FIND_LINKS`` (a folder or page holding torch-2.13.0+cpu) or ``TORCH_INDEX_URL``
(e.g. https://download.pytorch.org/whl/cpu), whichever is set.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "lock"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
# One lock file per Dockerfile's extra (services/<name>/Dockerfile installs lock/<extra>.txt).
SERVICE_EXTRAS = ("tts", "stt", "preprocess", "llm", "flan", "bark", "guardrails", "orchestrator", "ui")


def uv() -> str:
    for candidate in (Path(sys.executable).parent / "uv", shutil.which("uv")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise SystemExit("uv not found: it comes with the dev extra (make install), or `pip install uv`")


def compile_lock(out: Path, inputs: list[str], extras: list[str], constraints: list[Path], args: argparse.Namespace) -> None:
    cmd = [uv(), "pip", "compile", *inputs, "-o", str(out.relative_to(ROOT)), "--generate-hashes",
           "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
           "--override", "lock/overrides.txt", "--custom-compile-command", "make lock",
           "--index-url", "https://pypi.org/simple", "--quiet"]
    for extra in extras:
        cmd += ["--all-extras"] if extra == "*" else ["--extra", extra]
    for c in constraints:
        cmd += ["-c", str(c.relative_to(ROOT))]
    for link in filter(None, os.environ.get("PIP_FIND_LINKS", "").split()):
        cmd += ["--find-links", link]
    if os.environ.get("TORCH_INDEX_URL"):
        cmd += ["--extra-index-url", os.environ["TORCH_INDEX_URL"], "--index-strategy", "unsafe-best-match"]
    if args.upgrade:
        cmd.append("--upgrade")
    for pkg in args.upgrade_package or ():
        cmd += ["--upgrade-package", pkg]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "UV_NO_CONFIG": "1"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upgrade", action="store_true", help="newest allowed versions of everything")
    ap.add_argument("--upgrade-package", action="append", metavar="NAME", help="newest allowed version of NAME")
    args = ap.parse_args()
    constraints = ROOT / "constraints.txt"
    compile_lock(LOCK / "all.txt", ["pyproject.toml", "lock/build.in", "lock/preprocess.in"], ["*"], [constraints], args)
    # The subsets take their versions from all.txt: no upgrade flags, nothing new is chosen there.
    pinned = argparse.Namespace(upgrade=False, upgrade_package=None)
    compile_lock(LOCK / "build.txt", ["lock/build.in"], [], [LOCK / "all.txt"], pinned)
    for extra in SERVICE_EXTRAS:
        inputs = ["pyproject.toml", "lock/build.in"] + (["lock/preprocess.in"] if extra == "preprocess" else [])
        compile_lock(LOCK / f"{extra}.txt", inputs, [extra], [LOCK / "all.txt"], pinned)
    return 0


if __name__ == "__main__":
    sys.exit(main())
