"""The repository's configuration agrees with itself: compose files, Dockerfiles, Procfile, env files,
settings classes, the README port table and the generated configuration catalog."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import validate_compose  # noqa: E402

from services.common.settings import BaseServiceSettings  # noqa: E402
from services.common.testing import TEST_AUDIO, read_env_file  # noqa: E402


def env_keys(path: Path) -> set[str]:
    return set(read_env_file(path))


def service_packages() -> dict[str, type[BaseServiceSettings]]:
    out = {}
    for path in sorted((ROOT / "services").glob("*/settings.py")):
        if path.parent.name != "common":
            out[path.parent.name] = importlib.import_module(f"services.{path.parent.name}.settings").Settings
    return out


def compose_services() -> dict[str, dict]:
    problems: list[str] = []
    services = {}
    for f in validate_compose.COMPOSE_FILES:
        services.update(validate_compose.load_compose(ROOT / f, problems))
    assert not problems
    return services


# --- compose ------------------------------------------------------------------------------------------


def test_compose_files_validate():
    assert validate_compose.validate(ROOT) == []


@pytest.fixture
def repo_copy(tmp_path):
    dest = tmp_path / "repo"
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".venv", ".git", ".run", "__pycache__", "*.egg-info",
                                                              ".pytest_cache", ".cache"))
    return dest


@pytest.mark.parametrize(
    "removed, expected",
    [
        ("services/tts/Dockerfile", "Dockerfile services/tts/Dockerfile does not exist"),
        ("services/tts/.env.service", "env_file ./services/tts/.env.service does not exist"),
        (".env.docker", "env_file ./.env.docker does not exist"),
        ("scripts/health_check.py", "scripts/health_check.py, which does not exist"),
        ("monitoring/prometheus.yml", "volume source ./monitoring/prometheus.yml does not exist"),
        ("docker-compose.yml", "docker-compose.yml: file missing"),
    ],
)
def test_validation_fails_when_a_referenced_file_is_removed(repo_copy, removed, expected):
    assert validate_compose.validate(repo_copy) == []
    (repo_copy / removed).unlink()
    problems = validate_compose.validate(repo_copy)
    assert any(expected in p for p in problems), problems


def test_validation_catches_port_clash_missing_healthcheck_and_dangling_depends_on(repo_copy):
    path = repo_copy / "docker-compose.yml"
    doc = yaml.safe_load(path.read_text())
    doc["services"]["prometheus"]["ports"] = ["7000:9090"]
    del doc["services"]["prometheus"]["healthcheck"]
    doc["services"]["tts"]["depends_on"] = {"nonexistent": {"condition": "service_healthy"}}
    path.write_text(yaml.safe_dump(doc))
    problems = "\n".join(validate_compose.validate(repo_copy))
    assert re.search(r"host port 7000 used by (tts and prometheus|prometheus and tts)", problems)
    assert "prometheus: no healthcheck" in problems
    assert "tts depends_on nonexistent" in problems


def test_validation_catches_a_root_dockerfile_and_wrong_procfile_port(repo_copy):
    df = repo_copy / "services/tts/Dockerfile"
    df.write_text(df.read_text().replace("USER app", "USER root"))
    pf = repo_copy / "Procfile"
    pf.write_text(pf.read_text().replace("PORT=7000", "PORT=7001"))
    problems = "\n".join(validate_compose.validate(repo_copy))
    assert "does not run as a non-root USER" in problems
    assert "tts on PORT=7001 but its compose host port is 7000" in problems


def test_cli_exit_code():
    ok = subprocess.run([sys.executable, "scripts/validate_compose.py"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout


def host_container(mapping: object) -> str:
    """"host:container" of a compose port mapping, without a bind address ("127.0.0.1:8080:8080")."""
    return ":".join(str(mapping).split(":")[-2:])


def test_every_built_service_is_a_package_whose_default_port_is_its_host_port():
    packages = service_packages()
    for name, svc in compose_services().items():
        if "build" not in svc:
            continue
        pkg = name.replace("-", "_")
        host = int(host_container(svc["ports"][0]).split(":")[0])
        dockerfile = svc["build"].get("dockerfile", "")
        if pkg not in packages and dockerfile.startswith("services/"):
            # another service's code in another role (the plain orchestrator = orchestrator_enhanced with
            # ENABLE_LANGCHAIN=false): its compose environment must set the role and the port
            pkg = dockerfile.split("/")[1]
            env = svc.get("environment") or {}
            assert str(env.get("PORT")) == host_container(svc["ports"][0]).split(":")[1], f"{name} must set PORT"
            assert str(env.get("ENABLE_LANGCHAIN")).lower() == "false", f"{name} must set ENABLE_LANGCHAIN=false"
            assert pkg in packages, f"{name} builds {dockerfile}, which is no service package"
            continue
        assert pkg in packages, f"compose builds {name} but services/{pkg}/settings.py is missing"
        settings = packages[pkg]
        assert settings.service_name == name
        assert settings.model_fields["port"].get_default() == host
        assert (ROOT / "services" / pkg / "__main__.py").exists()


# --- env files and settings ------------------------------------------------------------------------------


def test_env_service_keys_are_exactly_the_service_settings():
    base = set(BaseServiceSettings.model_fields)
    for pkg, cls in service_packages().items():
        own = {f.upper() for f in cls.model_fields if f not in base}
        path = ROOT / "services" / pkg / ".env.service"
        assert path.exists(), f"{pkg} has no .env.service"
        assert env_keys(path) == own, f"services/{pkg}/.env.service does not match its Settings"


def test_common_and_docker_env_keys_are_read_by_a_settings_class():
    base = {f.upper() for f in BaseServiceSettings.model_fields}
    everything = base | {f.upper() for cls in service_packages().values() for f in cls.model_fields}
    aliases = {a.upper() for cls in service_packages().values() for f in cls.model_fields.values()
               for a in getattr(f.validation_alias, "choices", ()) if isinstance(a, str)}
    assert env_keys(ROOT / ".env.common") <= base
    assert env_keys(ROOT / ".env.docker") <= everything
    assert env_keys(ROOT / ".env.enhanced") <= everything | aliases


def test_env_docker_is_the_last_env_file_and_env_enhanced_goes_to_the_enhanced_services():
    for name, svc in compose_services().items():
        files = [f if isinstance(f, str) else f["path"] for f in svc.get("env_file") or []]
        if files:
            assert files[-1] == "./.env.docker", f"{name}: .env.docker must be the last env_file ({files})"
        if svc["_file"].name == "docker-compose.enhanced.yml" and name != "guardrails":
            assert "./.env.enhanced" in files, f"{name} does not read .env.enhanced"


def test_env_files_load_into_valid_settings():
    for cls in service_packages().values():
        cls()  # reads .env.common + .env.service; raises on a bad value


def test_configuration_catalog_is_current():
    r = subprocess.run([sys.executable, "scripts/gen_config_docs.py", "--check"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    text = (ROOT / "docs/reference/configuration.md").read_text()
    for cls in service_packages().values():
        for field in cls.model_fields:
            assert f"`{field.upper()}`" in text


# --- README, CI -----------------------------------------------------------------------------------------------


def test_readme_port_table_matches_compose():
    readme = (ROOT / "README.md").read_text()
    rows = {m[1]: m[2] for m in re.finditer(r"^\| (\S+)(?: \(compose name\))? \|[^|]*\| (\d+:\d+) \|", readme, re.M)}
    for name, svc in compose_services().items():
        assert name in rows, f"README port table lacks {name}"
        assert rows[name] == host_container(svc["ports"][0]), f"README says {name} {rows[name]}, compose {svc['ports'][0]}"
    assert len(set(r.split(":")[0] for r in rows.values())) == len(rows), "README host ports clash"


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("-r lock/tts.txt", "-r lock/tts.txt piper-tts==1.3.0"), "pip install names piper-tts==1.3.0"),
    (lambda t: t.replace("--require-hashes -r lock/tts.txt", "-r lock/tts.txt"), "without --require-hashes"),
    (lambda t: t.replace("--no-deps --require-hashes -r lock/tts.txt", "--require-hashes -r lock/tts.txt"),
     "without --no-deps"),
    (lambda t: t.replace("-r lock/tts.txt", "-r requirements.txt"), "requirements.txt, which is not a file under lock/"),
    (lambda t: t.replace("ARG PYTHON_VERSION=3.11", "ARG PYTHON_VERSION=3.12"), "builds on Python 3.12"),
])
def test_validation_catches_a_dockerfile_that_installs_around_the_lock(repo_copy, edit, expected):
    df = repo_copy / "services/tts/Dockerfile"
    df.write_text(edit(df.read_text()))
    problems = "\n".join(validate_compose.validate(repo_copy))
    assert "tts: services/tts/Dockerfile" in problems and expected in problems, problems


def test_validation_catches_a_service_lock_that_disagrees_with_the_full_lock(repo_copy):
    lock = repo_copy / "lock/tts.txt"
    version = re.search(r"^numpy==(\S+)", lock.read_text(), re.M)[1]
    lock.write_text(lock.read_text().replace(f"numpy=={version}", "numpy==1.0.0"))
    assert f"lock/tts.txt pins numpy==1.0.0, lock/all.txt pins {version}" in "\n".join(validate_compose.validate(repo_copy))


def test_the_makefile_and_ci_install_only_from_the_lock():
    """Versions come from lock/all.txt alone: the Makefile installs through scripts/install_deps.py, which
    reads it with --require-hashes, and nothing names a package to pip."""
    makefile, ci = (ROOT / "Makefile").read_text(), (ROOT / ".ci/run").read_text()
    assert re.search(r"scripts/install_deps\.py --venv \S+ --lock lock/all\.txt", makefile)
    assert "pip install" not in makefile and "pip install" not in ci and "make test" in ci
    script = (ROOT / "scripts/install_deps.py").read_text()
    assert script.count('"--require-hashes"') >= 3 and "constraints.txt" not in script


def test_readme_gives_the_two_commands_and_ci_runs_make_test():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci/run").read_text()


# --- test data ------------------------------------------------------------------------------------------------

# a path into the evaluation data beside the repository (its regex written so that it does not match itself)
READS_BESIDE_THE_REPO = re.compile(r"""shared[/\\]eval|["']shared["']\s*/\s*["']eval|parent\s*/\s*["']shared["']""")
TEST_AUDIO_MAX_BYTES = 5_000_000


def test_tests_read_no_data_from_beside_the_repository():
    """`make test` needs nothing outside the repository: only scripts/eval_*.py and bench_*.py read ../shared."""
    assert TEST_AUDIO == ROOT / "tests" / "data" / "audio"
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "tests").rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".wav"
        and path != TEST_AUDIO / "SOURCES.md"  # names the eval files the test audio was copied from
        for n, line in enumerate(path.read_text(errors="ignore").splitlines(), 1)
        if READS_BESIDE_THE_REPO.search(line)
    ]
    assert not offenders, "tests must use tests/data (services.common.testing.audio_file), not ../shared:\n" + \
        "\n".join(offenders)


def test_test_audio_is_small_and_every_file_has_its_source():
    everything = [p for p in TEST_AUDIO.rglob("*") if p.is_file()]
    files = sorted(p.relative_to(TEST_AUDIO).as_posix() for p in everything if p.name != "SOURCES.md")
    listed = dict(re.findall(r"^\| ([\w./-]+) \| (\d+) \|", (TEST_AUDIO / "SOURCES.md").read_text(), re.M))
    assert files, f"no test audio in {TEST_AUDIO}"
    assert not set(files) - set(listed), f"not in tests/data/audio/SOURCES.md: {sorted(set(files) - set(listed))}"
    assert not set(listed) - set(files), f"in SOURCES.md but missing: {sorted(set(listed) - set(files))}"
    changed = [f for f in files if (TEST_AUDIO / f).stat().st_size != int(listed[f])]
    assert not changed, f"size differs from SOURCES.md (a changed file needs its row updated): {changed}"
    size = sum(p.stat().st_size for p in everything)
    assert size < TEST_AUDIO_MAX_BYTES, f"tests/data/audio holds {size / 1e6:.1f} MB, more than the 5 MB allowed"
    rows = (TEST_AUDIO / "transcripts.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "filename\treference"
    named = sorted(row.split("\t")[0] for row in rows[1:])
    assert named == [f for f in files if f.startswith(("clean/", "noisy/"))], "transcripts.tsv != clean/ + noisy/"
