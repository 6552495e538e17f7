"""The `make run` fleet for integration tests: every Procfile service as its own local process, on free ports,
wired to each other, each of which a test can stop and start again (honcho, which `make run` uses, stops the
whole fleet when one process exits, so the failover tests manage the processes themselves).

Wiring: every service reads its peers' URLs from settings whose defaults are ``http://127.0.0.1:<compose host
port>``; the fleet sets each such setting to the peer's free port, and rewrites the same URLs where a Procfile
line names them (the plain orchestrator's line).
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.common.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.*?)\s*python -m (\S+)\s*$")
_LOOPBACK = re.compile(r"http://127\.0\.0\.1:(\d+)")


@dataclass
class Service:
    name: str
    module: str
    port: int
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Fleet:
    tmp: Path
    services: dict[str, Service] = field(default_factory=dict)

    @classmethod
    def from_procfile(cls, tmp: Path, *, only: set[str] | None = None,
                      env: dict[str, dict[str, str]] | None = None, common: dict[str, str] | None = None) -> Fleet:
        """The Procfile's services (``only`` some of them) with free ports; ``env`` adds per-service variables,
        ``common`` variables for every service."""
        lines = []
        for raw in (ROOT / "Procfile").read_text().splitlines():
            m = _LINE.match(raw.strip())
            if m and (only is None or m[1] in only):
                lines.append(m)
        host_ports = {m[1]: int(re.search(r"\bPORT=(\d+)", m[2])[1]) for m in lines}
        ports = {name: free_port() for name in host_ports}
        by_host = {host_ports[n]: ports[n] for n in host_ports}
        fleet = cls(tmp)
        for m in lines:
            name, assigns, module = m[1], m[2], m[3]
            service_env = dict(common or {})
            service_env.update(_url_settings(module, by_host))
            for key, _, value in (a.partition("=") for a in assigns.split()):
                service_env[key] = _LOOPBACK.sub(lambda u: f"http://127.0.0.1:{by_host.get(int(u[1]), u[1])}", value)
            service_env["PORT"] = str(ports[name])
            service_env.update((env or {}).get(name, {}))
            fleet.services[name] = Service(name, module, ports[name], service_env)
        return fleet

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def start(self, name: str, **extra_env: str) -> None:
        svc = self.services[name]
        svc.env.update(extra_env)
        svc.log = self.tmp / f"{name}.log"
        out = svc.log.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "LOG_JSON": "false", **svc.env}
        svc.proc = subprocess.Popen([sys.executable, "-m", svc.module], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def start_all(self) -> None:
        for name in self.services:
            self.start(name)

    def wait_ready(self, names: list[str] | None = None, timeout_s: float = 300,
                   allow_not_ready: set[str] = frozenset()) -> dict[str, str]:
        """Wait for /health/ready; services in ``allow_not_ready`` only need to be live (e.g. llm-flan
        without weights). Returns the last readiness detail per service."""
        pending = set(names or self.services)
        detail: dict[str, str] = {}
        give_up = time.monotonic() + timeout_s
        while pending and time.monotonic() < give_up:
            for name in list(pending):
                svc = self.services[name]
                assert svc.proc is not None and svc.proc.poll() is None, f"{name} exited:\n{self.tail(name)}"
                try:
                    r = httpx.get(f"{svc.url}/health/ready", timeout=2)
                except httpx.HTTPError as exc:
                    detail[name] = type(exc).__name__
                    continue
                detail[name] = r.text[:300]
                if r.status_code == 200 or (name in allow_not_ready and "failed to start" in r.text):
                    pending.discard(name)
            time.sleep(0.3)
        assert not pending, f"not ready in {timeout_s} s: " + "; ".join(f"{n}: {detail.get(n)}\n{self.tail(n)}"
                                                                        for n in pending)
        return detail

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        svc = self.services[name]
        if svc.proc is None or svc.proc.poll() is not None:
            return
        os.killpg(svc.proc.pid, sig)
        try:
            svc.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(svc.proc.pid, signal.SIGKILL)
            svc.proc.wait(timeout=10)

    def stop_all(self) -> None:
        for name in reversed(list(self.services)):
            self.stop(name)

    def tail(self, name: str, lines: int = 30) -> str:
        log = self.services[name].log
        if log is None or not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_prompt_warmed(url: str, model: str = "llm", timeout_s: float = 300) -> dict:
    """Wait until orchestrator-enhanced at ``url`` reports its system prompt and tools evaluated on ``model``
    (readiness component ``llm-prompt-warm-up``; ~1 min on 2 cores after llm loads). Until then a turn that
    needs the model waits behind the warm-up, past a turn's deadline on a slow machine."""
    ready: dict = {}
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        ready = httpx.get(f"{url}/health/ready", timeout=10).json()
        if model in ready["components"]["llm-prompt-warm-up"]["warmed"]:
            return ready
        time.sleep(1)
    raise AssertionError(f"the prompt was never warmed up on {model} in {timeout_s} s: {ready}")


@contextmanager
def orchestrator_url(url: str | None, prefix: str) -> Iterator[str]:
    """orchestrator-enhanced for an evaluation or benchmark script: ``url`` when given (a running fleet), else
    `make run`'s fleet with offline defaults started on free ports (llm-flan may stay not ready), stopped on
    exit and on SIGTERM, with a rate limit high enough not to interfere."""
    if url is not None:
        yield url
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    fleet = Fleet.from_procfile(tmp, common={"MEMORY_DB_PATH": str(tmp / "memory.sqlite3"),
                                             "GUARDRAILS_DB_PATH": str(tmp / "guardrails.sqlite3"),
                                             "RATE_LIMIT": "100000/minute", "LOG_LEVEL": "WARNING"})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the fleet is stopped on kill too
    print("starting the fleet (offline defaults) ...", flush=True)
    t = time.perf_counter()
    try:
        fleet.start_all()
        fleet.wait_ready(allow_not_ready={"llm-flan"})
        print(f"fleet ready in {time.perf_counter() - t:.0f} s", flush=True)
        yield fleet["orchestrator-enhanced"].url
    finally:
        fleet.stop_all()


def _url_settings(module: str, by_host: dict[int, int]) -> dict[str, str]:
    """``FIELD=http://127.0.0.1:<new port>`` for every URL setting of the module whose default names a fleet
    service's host port."""
    try:
        settings_cls = importlib.import_module(module + ".settings").Settings
    except (ImportError, AttributeError):
        return {}
    out = {}
    for name, f in settings_cls.model_fields.items():
        default = f.get_default()
        if isinstance(default, str) and (m := _LOOPBACK.fullmatch(default.rstrip("/"))):
            if int(m[1]) in by_host:
                out[name.upper()] = f"http://127.0.0.1:{by_host[int(m[1])]}"
    return out
