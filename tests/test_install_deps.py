"""scripts/install_deps.py: llama.cpp's CMake flags per CPU, and reading the lock."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import install_deps  # noqa: E402

AMX_CPU = set("fpu sse4_2 avx avx2 fma f16c bmi2 avx512f avx512bw avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16".split())
OLD_CPU = set("fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt".split())


def flags_of(args: list[str]) -> dict[str, str]:
    return dict(a.removeprefix("-D").split("=") for a in args)


@pytest.mark.parametrize("cpu", [AMX_CPU, OLD_CPU, set()], ids=["amx-avx512", "sse4.2-only", "unknown"])
def test_avx512_amx_and_native_are_never_built_whatever_the_cpu(cpu):
    flags = flags_of(install_deps.cmake_args(cpu))
    for name in ("GGML_NATIVE", "GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_BF16", "GGML_AMX_TILE",
                 "GGML_AMX_INT8", "GGML_AMX_BF16"):
        assert flags[name] == "OFF", (name, flags)


def test_x86_64_v3_code_only_where_the_cpu_runs_it():
    on_amx, on_old = flags_of(install_deps.cmake_args(AMX_CPU)), flags_of(install_deps.cmake_args(OLD_CPU))
    assert all(on_amx[f] == "ON" for f in ("GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"))
    assert all(on_old[f] == "OFF" for f in ("GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"))
    assert on_old["GGML_SSE42"] == "ON"
    assert flags_of(install_deps.cmake_args(set(install_deps.X86_64_V3))) == on_amx  # the Docker image's flags


def test_cpu_flags_reads_the_flags_line():
    assert install_deps.cpu_flags("processor: 0\nflags\t\t: fpu avx2 amx_tile\nbugs: x\n") == {"fpu", "avx2", "amx_tile"}
    assert install_deps.cpu_flags("") == set()


def test_lock_entries_keep_each_requirement_with_its_hashes():
    text = (ROOT / "lock" / "all.txt").read_text()
    entries = install_deps.lock_entries(text)
    assert len(entries) == len(re.findall(r"^\S+==", text, re.M))
    llama = entries["llama-cpp-python"]
    assert llama.startswith("llama-cpp-python==") and "--hash=sha256:" in llama and "#" not in llama
    assert entries["torch"].startswith("torch==2.13.0+cpu")  # the CPU build; PyPI's plain 2.13.0 is CUDA
    assert "torchaudio" not in entries  # lock/overrides.txt: PyPI's torchaudio is a CUDA build


def test_the_lock_is_resolved_for_the_python_the_install_accepts():
    import lock

    assert lock.PYTHON_VERSION == ".".join(map(str, install_deps.PYTHON_VERSION))
