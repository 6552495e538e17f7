#!/usr/bin/env python3
"""Health check for one URL, several, or every service of the local fleet. Standard library only, so it
runs inside any service image as the compose/Docker HEALTHCHECK.

    python scripts/health_check.py http://localhost:7000/health/ready --timeout 5
    python scripts/health_check.py --procfile Procfile --timeout 5        # every local service
    python scripts/health_check.py --procfile Procfile --wait 300          # poll until ready or give up

Exit code 0 when every URL answered 2xx within the timeout, 1 otherwise. A URL without a path is
checked at /health/ready.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PROCFILE_LINE = re.compile(r"^(?P<name>[A-Za-z0-9_-]+):.*\bPORT=(?P<port>\d+)\b")


def procfile_services(path: Path, host: str = "127.0.0.1") -> dict[str, str]:
    """``{name: base_url}`` for every Procfile entry that sets PORT=."""
    services = {}
    for line in path.read_text().splitlines():
        m = PROCFILE_LINE.match(line.strip())
        if m:
            services[m["name"]] = f"http://{host}:{m['port']}"
    return services


def check(url: str, timeout: float) -> tuple[bool, str]:
    if re.fullmatch(r"https?://[^/]+/?", url):
        url = url.rstrip("/") + "/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (http(s) only, by the regex above)
            return 200 <= r.status < 300, f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        detail = f"HTTP {e.code}"
        try:
            reasons = json.loads(e.read() or b"{}").get("reasons")
            if reasons:
                detail += ": " + "; ".join(reasons)
        except (ValueError, AttributeError, OSError):
            pass  # the status alone says not ready; a body that is slow or cut off adds nothing
        return False, detail
    except (urllib.error.URLError, OSError, ValueError) as e:
        return False, f"unreachable: {getattr(e, 'reason', e)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("urls", nargs="*", help="health URLs (or base URLs: /health/ready is appended)")
    p.add_argument("--procfile", type=Path, help="check every service of this Procfile on 127.0.0.1")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    p.add_argument("--wait", type=float, default=0.0, help="keep polling up to this many seconds")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    targets = {u: u for u in args.urls}
    if args.procfile:
        targets.update(procfile_services(args.procfile))
    if not targets:
        p.error("give at least one URL or --procfile")

    give_up = time.monotonic() + args.wait
    while True:
        results = {name: check(url, args.timeout) for name, url in targets.items()}
        healthy = all(ok for ok, _ in results.values())
        if healthy or time.monotonic() >= give_up:
            break
        time.sleep(1.0)
    if not args.quiet:
        for name, (ok, detail) in results.items():
            label = name if name == targets[name] else f"{name:<24} {targets[name]}"
            print(f"{'OK  ' if ok else 'FAIL'} {label}  {detail}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
