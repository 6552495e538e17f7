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
    if "constraints.txt" not in text:
        problems.append(f"{name}: {rel} installs without -c constraints.txt (torch pin)")
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
