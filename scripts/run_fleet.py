#!/usr/bin/env python3
"""`make run`: start every implemented service (the Procfile) under honcho, wait until each is ready,
print the URLs, and stop everything on Ctrl-C / SIGTERM (`make stop`).

honcho is the process manager: it runs each Procfile line in its own process group and, when it is
asked to stop, terminates every group (SIGKILL after 5 s). This script only adds what honcho lacks:
waiting for /health/ready, printing URLs, a pid file for `make stop` and a log file for `make logs`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from health_check import check, procfile_services  # noqa: E402

RUN_DIR = ROOT / ".run"
PID_FILE = RUN_DIR / "fleet.pid"
LOG_FILE = RUN_DIR / "fleet.log"


def _pump(src, log_path: Path) -> None:
    """Copy honcho's output to our stdout and to the log file."""
    with log_path.open("ab") as log:
        for line in iter(src.readline, b""):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            log.write(line)
            log.flush()


def wait_ready(services: dict[str, str], timeout_s: float, honcho: subprocess.Popen) -> dict[str, str]:
    """Poll /health/ready of every service; return {name: reason} for those not ready in time."""
    pending = dict(services)
    reasons: dict[str, str] = {}
    give_up = time.monotonic() + timeout_s
    while pending and time.monotonic() < give_up and honcho.poll() is None:
        for name, url in list(pending.items()):
            ok, detail = check(url, timeout=2.0)
            if ok:
                pending.pop(name)
                reasons.pop(name, None)
            else:
                reasons[name] = detail
                if "failed to start" in detail:  # final (e.g. model not available offline): stop waiting
                    pending.pop(name)
        time.sleep(0.5)
    return {n: reasons.get(n, "not checked") for n in services if n in pending or n in reasons}


def stop() -> int:
    """`make stop`: signal a fleet started by `make run` in another terminal."""
    try:
        pid = int(PID_FILE.read_text())
    except (FileNotFoundError, ValueError):
        print("no fleet is running (no .run/fleet.pid)")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"fleet (pid {pid}) was not running")
        PID_FILE.unlink(missing_ok=True)
        return 0
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("fleet stopped")
            return 0
        time.sleep(0.1)
    print(f"fleet (pid {pid}) did not stop within 20 s", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procfile", type=Path, default=ROOT / "Procfile")
    p.add_argument("--ready-timeout", type=float, default=float(os.environ.get("FLEET_READY_TIMEOUT_S", 600)),
                   help="seconds to wait for every service to be ready (default 600; env FLEET_READY_TIMEOUT_S)")
    p.add_argument("--stop", action="store_true", help="stop a fleet started by `make run`")
    args = p.parse_args(argv)
    if args.stop:
        return stop()

    services = procfile_services(args.procfile)
    if not services:
        print(f"{args.procfile} lists no service", file=sys.stderr)
        return 1
    busy = [f"{n} ({u})" for n, u in services.items() if check(u + "/health/live", 1.0)[1].startswith("HTTP")]
    if busy:
        print("already answering, is a fleet running? (make stop) -> " + ", ".join(busy), file=sys.stderr)
        return 1

    RUN_DIR.mkdir(exist_ok=True)
    LOG_FILE.write_bytes(b"")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "--no-colour", "start", "-f", str(args.procfile), "-d", str(ROOT)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    PID_FILE.write_text(str(os.getpid()))
    pump = threading.Thread(target=_pump, args=(honcho.stdout, LOG_FILE), daemon=True)
    pump.start()

    stopping = threading.Event()

    def _stop(signum, _frame):
        if not stopping.is_set():
            stopping.set()
            print(f"\nstopping the fleet ({signal.Signals(signum).name})...", flush=True)
            honcho.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        not_ready = wait_ready(services, args.ready_timeout, honcho)
        if honcho.poll() is None and not stopping.is_set():
            print("\naudio-orchestrator fleet (local processes on loopback):", flush=True)
            for name, url in services.items():
                state = "ready" if name not in not_ready else f"NOT READY: {not_ready[name]}"
                print(f"  {name:<24} {url:<26} docs {url}/docs   {state}", flush=True)
            print("logs: make logs | health: make health-check-all | stop: Ctrl-C or make stop\n", flush=True)
        try:
            code = honcho.wait()
        except KeyboardInterrupt:
            code = honcho.wait()
        if not stopping.is_set():
            print(f"a service exited, honcho stopped the fleet (exit {code}); see {LOG_FILE}", file=sys.stderr)
        return 0 if stopping.is_set() else (code or 1)
    finally:
        if honcho.poll() is None:
            try:
                honcho.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(honcho.pid, signal.SIGKILL)
        pump.join(timeout=2)
        PID_FILE.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
