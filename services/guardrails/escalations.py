"""Escalations (POST /escalate) kept in SQLite, so a restart loses nothing.

One table, created at start. Every call opens its own connection in a worker thread
(``asyncio.to_thread``), so the event loop never waits on the disk; WAL journaling lets readers and the
writer of several processes on one host share the file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS escalations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,          -- ISO 8601, UTC, microseconds
    reason TEXT NOT NULL,
    context TEXT NOT NULL,             -- JSON
    session_id TEXT,
    correlation_id TEXT
);
CREATE INDEX IF NOT EXISTS escalations_created_at ON escalations (created_at);
"""


@dataclass(frozen=True)
class Escalation:
    id: int
    created_at: datetime
    reason: str
    context: Any
    session_id: str | None
    correlation_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": self.created_at.isoformat(), "reason": self.reason,
                "context": self.context, "session_id": self.session_id, "correlation_id": self.correlation_id}


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


class EscalationStore:
    """An app component: ready once the database file and table exist."""

    name = "escalations"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0)
        conn.row_factory = sqlite3.Row
        return conn

    def _init(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as conn, conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)

    async def start(self) -> None:
        await asyncio.to_thread(self._init)
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    async def aclose(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"engine": "sqlite", "path": str(self.path)}

    def _add(self, reason: str, context: Any, session_id: str | None, correlation_id: str | None) -> Escalation:
        created = datetime.now(timezone.utc)
        with closing(self._connect()) as conn, conn:
            cur = conn.execute(
                "INSERT INTO escalations (created_at, reason, context, session_id, correlation_id) VALUES (?,?,?,?,?)",
                (_iso(created), reason, json.dumps(context, ensure_ascii=False), session_id, correlation_id))
            row_id = int(cur.lastrowid or 0)
        return Escalation(row_id, created, reason, context, session_id, correlation_id)

    def _list(self, limit: int, since: datetime | None) -> list[Escalation]:
        query = "SELECT * FROM escalations"
        args: list[Any] = []
        if since is not None:
            query += " WHERE created_at > ?"
            args.append(_iso(since))
        query += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with closing(self._connect()) as conn:
            rows = conn.execute(query, args).fetchall()
        return [Escalation(r["id"], datetime.fromisoformat(r["created_at"]), r["reason"], json.loads(r["context"]),
                           r["session_id"], r["correlation_id"]) for r in rows]

    async def add(self, reason: str, context: Any, *, session_id: str | None = None,
                  correlation_id: str | None = None) -> Escalation:
        return await asyncio.to_thread(self._add, reason, context, session_id, correlation_id)

    async def list(self, *, limit: int = 50, since: datetime | None = None) -> list[Escalation]:
        """Newest first; only those created after ``since`` when given."""
        return await asyncio.to_thread(self._list, limit, since)
