"""`make models` for llm (scripts/make_models.py): the bundled model is joined and verified, another GGUF is
checked before the script tells how to serve it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from services.llm.models import BUNDLED, materialize
from services.llm.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def make_models(*args: str, models_dir: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(models_dir), "LLM_MODELS_DIR": str(models_dir),
           "LLM_BUNDLED_MODEL": "smollm2-135m", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "scripts/make_models.py", "--only", "llm", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def smollm2() -> Path:
    return materialize(BUNDLED["smollm2-135m"], Settings(_env_file=None).models_dir())


def test_the_configured_bundled_model_is_prepared(tmp_path):
    r = make_models(models_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "llm: SmolLM2-135M-Instruct -> " in r.stdout and r.stdout.rstrip().endswith("s")


def test_a_local_gguf_is_checked_and_the_setting_to_serve_it_printed(tmp_path):
    gguf = smollm2()
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    r = make_models("--gguf", str(gguf), "--sha256", digest, models_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"LLM_MODEL_PATH={gguf.resolve()}" in r.stdout
    r = make_models("--gguf", str(gguf), "--sha256", "0" * 64, models_dir=tmp_path)
    assert r.returncode == 1 and "SHA-256 differs" in r.stderr


def test_a_file_that_is_not_a_gguf_or_a_hub_file_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a model at all")
    r = make_models("--gguf", str(fake), models_dir=tmp_path)
    assert r.returncode == 1 and "is not a GGUF file" in r.stderr
    r = make_models("--gguf", "just-a-name.gguf", models_dir=tmp_path)
    assert r.returncode == 1 and "owner/repo/file.gguf" in r.stderr
