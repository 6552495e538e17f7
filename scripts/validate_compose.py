#!/usr/bin/env python3
"""Check the compose files against the repository, without a Docker engine.

    python scripts/validate_compose.py        # prints problems, exit 1 if any

Checks: every build context, Dockerfile, env file, bind-mounted file and script named in a healthcheck
exists; host ports are unique; every service has a healthcheck; every depends_on target exists; each
service Dockerfile is multi-stage, runs as a non-root user, has a HEALTHCHECK and listens (ENV PORT) on
the container port compose maps; the Procfile runs every service we build, on its compose host port;
Prometheus scrapes every service we build.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.enhanced.yml")
LOCK_PYTHON = "3.11"  # scripts/lock.py resolves lock/ for it
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.M)


def lock_pins(path: Path) -> dict[str, str]:
    """``{normalised name: version}`` of a lock file."""
    return {re.sub(r"[-_.]+", "-", n).lower(): v for n, v in PIN.findall(path.read_text())}


def run_commands(dockerfile_text: str) -> list[str]:
    """The shell text of each RUN instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", dockerfile_text)
    return [m.group(1) for m in re.finditer(r"^RUN\s+(.*)$", joined, re.M)]


def check_pip_installs(where: str, command: str, root: Path, problems: list[str]) -> None:
    """Each ``pip install`` in ``command`` installs from the lock: --no-deps, requirement files under lock/ with
    --require-hashes, or the project itself; never a package named on the command line."""
    for part in re.split(r"&&|;|\|\|", command):
        words = part.split()
        if "pip" not in words or "install" not in words[words.index("pip"):]:
            continue
        args = words[words.index("install", words.index("pip")) + 1:]
        if "--no-deps" not in args:
            problems.append(f"{where}: pip install without --no-deps (the lock is complete): {part.strip()}")
        reqs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-r", "--requirement")]
        for req in reqs:
            if not req.startswith("lock/") or not (root / req).is_file():
                problems.append(f"{where}: installs {req}, which is not a file under lock/")
        if reqs and "--require-hashes" not in args:
            problems.append(f"{where}: installs {' '.join(reqs)} without --require-hashes")
        values = {args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-r", "--requirement", "--extra-index-url")}
        targets = [a for a in args if not a.startswith("-") and a not in values]
        if any(t != "." for t in targets):
            problems.append(f"{where}: pip install names {' '.join(t for t in targets if t != '.')}; "
                            "versions come from lock/ only")


def check_locks(root: Path, problems: list[str]) -> None:
    """Every lock/<name>.txt pins the versions lock/all.txt pins (they are resolved from it: make lock)."""
    all_txt = root / "lock" / "all.txt"
    if not all_txt.is_file():
        problems.append("lock/all.txt missing (make lock)")
        return
    pins = lock_pins(all_txt)
    for path in sorted((root / "lock").glob("*.txt")):
        if path.name in ("all.txt", "overrides.txt"):
            continue
        for name, version in lock_pins(path).items():
            if pins.get(name) != version:
                problems.append(f"lock/{path.name} pins {name}=={version}, lock/all.txt "
                                f"{'pins ' + pins[name] if name in pins else 'does not have it'} (make lock)")


def load_compose(path: Path, problems: list[str], seen: set[Path] | None = None) -> dict[str, dict]:
    """Services of a compose file with its `include`s merged in (paths resolved per file)."""
    seen = seen or set()
    if path in seen:
        return {}
    seen.add(path)
    if not path.exists():
        problems.append(f"{path.name}: file missing")
        return {}
    doc = yaml.safe_load(path.read_text()) or {}
    services: dict[str, dict] = {}
    for inc in doc.get("include") or []:
        inc_path = inc if isinstance(inc, str) else (inc.get("path") if isinstance(inc, dict) else None)
        if not inc_path:
            problems.append(f"{path.name}: include entry without a path")
            continue
        for name, svc in load_compose((path.parent / inc_path).resolve(), problems, seen).items():
            if name in services:
                problems.append(f"{path.name}: service {name} defined twice")
            services[name] = svc
    for name, svc in (doc.get("services") or {}).items():
        if name in services:
            problems.append(f"{path.name}: service {name} defined twice (also in an included file)")
        services[name] = {**(svc or {}), "_file": path}
    return services


def _host_port(mapping: str) -> tuple[int, int]:
    parts = str(mapping).split(":")
    return int(parts[-2]), int(parts[-1].split("/")[0])


def _check_dockerfile(
    name: str, dockerfile: Path, container_port: int | None, root: Path, problems: list[str]
) -> None:
    text = dockerfile.read_text()
    rel = dockerfile.relative_to(root)
    if len(re.findall(r"^FROM\s", text, re.M)) < 2:
        problems.append(f"{name}: {rel} is not multi-stage")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1] in ("root", "0"):
        problems.append(f"{name}: {rel} does not run as a non-root USER")
    if not re.search(r"^HEALTHCHECK\s", text, re.M) or "scripts/health_check.py" not in text:
        problems.append(f"{name}: {rel} has no HEALTHCHECK via scripts/health_check.py")
    m = re.search(r"\bPORT=(\d+)", text)
    if container_port is not None and (not m or int(m[1]) != container_port):
        problems.append(f"{name}: {rel} ENV PORT={m[1] if m else '?'} but compose maps container port {container_port}")
    py = re.search(r"^ARG\s+PYTHON_VERSION=(\S+)", text, re.M)
    if not py or py[1] != LOCK_PYTHON:
        problems.append(f"{name}: {rel} builds on Python {py[1] if py else '?'}, lock/ is resolved for {LOCK_PYTHON}")
    commands = run_commands(text)
    if not any(re.search(r"-r\s+lock/(?!build\.txt)\S+\.txt", c) for c in commands):
        problems.append(f"{name}: {rel} does not install its service's lock file (lock/<extra>.txt)")
    for command in commands:
        check_pip_installs(f"{name}: {rel}", command, root, problems)
    for src in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+$", text, re.M):
        for item in src.split():
            if not (root / item).exists():
                problems.append(f"{name}: {rel} copies {item}, which does not exist")


def validate(root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    all_services: dict[str, dict] = {}
    for fname in COMPOSE_FILES:
        services = load_compose(root / fname, problems)
        ports: dict[int, str] = {}
        for name, svc in services.items():
            for mapping in svc.get("ports") or []:
                host, _ = _host_port(mapping)
                if host in ports and ports[host] != name:
                    problems.append(f"{fname}: host port {host} used by {ports[host]} and {name}")
                ports[host] = name
            for dep in svc.get("depends_on") or {}:
                if dep not in services:
                    problems.append(f"{fname}: {name} depends_on {dep}, which is not a service")
        all_services.update(services)

    built: dict[str, tuple[int, int]] = {}
    for name, svc in all_services.items():
        base = svc["_file"].parent
        hc = (svc.get("healthcheck") or {}).get("test")
        if not hc:
            problems.append(f"{name}: no healthcheck")
        for token in hc or []:
            if str(token).startswith("/app/scripts/"):
                script = root / str(token).removeprefix("/app/")
                if not script.exists():
                    problems.append(f"{name}: healthcheck runs {script.relative_to(root)}, which does not exist")
        for env_file in svc.get("env_file") or []:
            path = env_file if isinstance(env_file, str) else env_file.get("path")
            if not (base / path).exists():
                problems.append(f"{name}: env_file {path} does not exist")
        for vol in svc.get("volumes") or []:
            src = str(vol).split(":")[0]
            if src.startswith((".", "/")) and not (base / src).exists():
                problems.append(f"{name}: volume source {src} does not exist")
        build = svc.get("build")
        mapped = [_host_port(p) for p in svc.get("ports") or []]
        if build:
            ctx = base / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = ctx / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            if not ctx.is_dir():
                problems.append(f"{name}: build context {ctx} does not exist")
            elif not dockerfile.exists():
                problems.append(f"{name}: Dockerfile {dockerfile.relative_to(root)} does not exist")
            else:
                _check_dockerfile(name, dockerfile, mapped[0][1] if mapped else None, root, problems)
            if mapped:
                built[name] = mapped[0]
            if hc and mapped and not any(f":{mapped[0][1]}/" in str(t) for t in hc):
                problems.append(f"{name}: healthcheck does not probe container port {mapped[0][1]}")

    check_locks(root, problems)
    procfile = root / "Procfile"
    local = {}
    if procfile.exists():
        for line in procfile.read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9_-]+):.*\bPORT=(\d+)\b", line.strip())
            if m:
                local[m[1]] = int(m[2])
    else:
        problems.append("Procfile missing")
    for name, (host, _) in built.items():
        if name not in local:
            problems.append(f"Procfile: {name} is built by compose but not run locally")
        elif local[name] != host:
            problems.append(f"Procfile: {name} on PORT={local[name]} but its compose host port is {host}")
    for name in local:
        if name not in built:
            problems.append(f"Procfile: {name} is not a compose service with a build")

    prom = root / "monitoring" / "prometheus.yml"
    if prom.exists():
        doc = yaml.safe_load(prom.read_text()) or {}
        targets = {t for job in doc.get("scrape_configs") or [] for sc in job.get("static_configs") or []
                   for t in sc.get("targets") or []}
        for name, (_, container) in built.items():
            if f"{name}:{container}" not in targets:
                problems.append(f"monitoring/prometheus.yml does not scrape {name}:{container}")
    return problems


def main() -> int:
    problems = validate()
    for p in problems:
        print(f"PROBLEM {p}")
    print("compose files OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
