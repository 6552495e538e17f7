"""`make run`'s runner with real processes: honcho starts the Procfile's services, the runner waits for
readiness and prints URLs, health_check.py agrees, and Ctrl-C leaves no process behind.

The services run on free ports (a copy of the Procfile with other PORT= values), so the test does not
collide with a fleet a developer has running on the real ports."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from services.tts_bark.testing import build_random_bark
from services.common.testing import free_port
from tests.integration.fleet import Fleet, wait_prompt_warmed
from tests.llm_flan.tiny_t5 import build_tiny_t5

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def procfile_on_free_ports(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """The Procfile with free ports and every service wired to its peers' ports (tests/integration/fleet.py);
    llm-flan gets a tiny random-weight T5 (no FLAN-T5 weights offline), tts-bark a tiny random Bark."""
    model = build_tiny_t5(tmp_path / "tiny-t5")
    bark = build_random_bark(tmp_path / "tiny-bark")
    fleet = Fleet.from_procfile(tmp_path, common={"MEMORY_DB_PATH": str(tmp_path / "memory.sqlite3"),
                                                  "GUARDRAILS_DB_PATH": str(tmp_path / "guardrails.sqlite3")},
                                env={"llm-flan": {"FLAN_T5_MODEL_SIZE": str(model)},
                                     "tts-bark": {"BARK_MODEL": str(bark), "BARK_CPU_THREADS": "1"}})
    lines = []
    for svc in fleet.services.values():
        assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in svc.env.items() if k != "PORT")
        lines.append(f"{svc.name}: PORT={svc.port} {assigns} python -m {svc.module}")
    path = tmp_path / "Procfile"
    path.write_text("\n".join(lines) + "\n")
    return path, {name: svc.port for name, svc in fleet.services.items()}


def service_pids(ports: dict[str, int]) -> set[int]:
    """Processes running `-m services.<name>` with PORT= one of ours (other fleets may run beside us)."""
    wanted = {f"PORT={p}".encode() for p in ports.values()}
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
                env = set((proc / "environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if b"-m\0services." in cmd and env & wanted:
                found.add(int(proc.name))
    return found


def alive(pid: int) -> bool:
    """Running or sleeping; an exited process waiting to be reaped (state Z) by init counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_runner_starts_the_fleet_prints_urls_and_ctrl_c_leaves_nothing(tmp_path):
    procfile, ports = procfile_on_free_ports(tmp_path)
    assert ports, "the Procfile lists no service"
    log = tmp_path / "runner.log"
    with log.open("wb") as out:
        runner = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "run_fleet.py"), "--procfile", str(procfile), "--ready-timeout", "120"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and "fleet (local processes" not in log.read_text():
                assert runner.poll() is None, log.read_text()
                time.sleep(0.5)
            text = log.read_text()
            for name, port in ports.items():
                # the whole state column is "ready" ("NOT READY: ... already exists" once passed a looser pattern)
                assert re.search(rf"^\s*{name}\s+http://127\.0\.0\.1:{port}\s+docs \S+\s+ready$", text, re.M), text

            # health_check.py (make health-check-all) agrees, and exits non-zero for a dead port
            ok = subprocess.run([sys.executable, "scripts/health_check.py", "--procfile", str(procfile)], cwd=ROOT)
            dead = subprocess.run([sys.executable, "scripts/health_check.py", f"http://127.0.0.1:{free_port()}",
                                   "--timeout", "1"], cwd=ROOT, capture_output=True, text=True)
            assert ok.returncode == 0
            assert dead.returncode == 1 and "FAIL" in dead.stdout

            if "tts" in ports:  # the fleet really serves: the openai client speaks through it
                client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports['tts']}/v1", api_key="x", max_retries=0)
                audio = client.audio.speech.create(model="tts-1", voice="en_US-joe-medium", input="Fleet is up.",
                                                   response_format="wav")
                assert audio.content[:4] == b"RIFF"
            if "llm-flan" in ports:
                llm = openai.OpenAI(base_url=f"http://127.0.0.1:{ports['llm-flan']}/v1", api_key="x", max_retries=0)
                reply = llm.chat.completions.create(model="llm-flan", messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=4, temperature=0)
                assert reply.choices[0].message.content is not None and reply.usage.completion_tokens <= 4

            if "tts-bark" in ports:  # Bark with its Piper fallback, through the fleet
                bark = httpx.post(f"http://127.0.0.1:{ports['tts-bark']}/synthesize", json={"text": "Fleet is up."},
                                  timeout=60)
                assert bark.status_code == 200 and bark.json()["engine"] in ("bark", "piper")

            if "orchestrator-enhanced" in ports:  # the centre of the fleet answers through its peers
                wait_prompt_warmed(f"http://127.0.0.1:{ports['orchestrator-enhanced']}")
                r = httpx.post(f"http://127.0.0.1:{ports['orchestrator-enhanced']}/mcp/transcript",
                               json={"transcript": "Hello there."}, timeout=120)
                assert r.status_code == 200 and r.json()["response"].strip(), r.text

            services = service_pids(ports)
            assert len(services) >= len(ports), "a service process is missing"
            runner.send_signal(signal.SIGINT)  # what Ctrl-C delivers
            assert runner.wait(timeout=30) == 0, log.read_text()
        finally:
            if runner.poll() is None:  # a failed assertion above: stop the fleet the way Ctrl-C does, so honcho
                runner.send_signal(signal.SIGINT)  # takes its services (own process groups) down with it
                try:
                    runner.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(runner.pid, signal.SIGKILL)
                    for pid in service_pids(ports):
                        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    leftovers = {p for p in services if alive(p)}
    assert not leftovers, f"processes left behind: {leftovers}"
    assert not any(port_open(p) for p in ports.values())
    assert "stopping the fleet (SIGINT)" in log.read_text()


def test_runner_refuses_to_start_over_a_running_fleet(tmp_path):
    procfile, ports = procfile_on_free_ports(tmp_path)
    name, port = next(iter(ports.items()))
    # something already answers HTTP on the service's port
    squatter = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if port_open(port):
                break
            time.sleep(0.1)
        r = subprocess.run([sys.executable, "scripts/run_fleet.py", "--procfile", str(procfile)], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
    finally:
        squatter.kill()
        squatter.wait()
    assert r.returncode == 1
    assert "already answering" in r.stderr and name in r.stderr
