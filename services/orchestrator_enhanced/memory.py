"""Conversation memory of the agent: one history per session, never shared between sessions, kept across restarts.

Both engines are LangChain's kept chat-history stores (``langchain_community.chat_message_histories``), so the
stored format is theirs (``message_to_dict`` JSON, one entry per message):

- `SqliteMemory` (default, ``MEMORY_DB_PATH``): ``SQLChatMessageHistory`` in its async mode on one shared
  ``sqlite+aiosqlite`` engine, so the event loop never waits on the disk. One table, ``message_store`` (id, session
  id, message), plus an index on the session id (the store creates none); WAL journaling, so several processes on
  one host can share the file.
- `RedisMemory` (``MEMORY_URL``/``REDIS_URL`` set, shared by replicas): ``RedisChatMessageHistory``, one plain Redis
  list per session (LPUSH/LRANGE/EXPIRE/DEL, no Redis modules needed), on one shared client. The store has no
  async API, so every call runs in a worker thread. ``MEMORY_TTL_S`` > 0 expires a session that many seconds after
  its last turn.

A turn (``[HumanMessage, (AIMessage with tool calls, ToolMessage, ...,) AIMessage]``) is written in one transaction
(SQL transaction; Redis MULTI/EXEC), so another writer's messages never land inside it, and the appends of one
process to one session run in call order. Session ids are stored verbatim in SQLite (a bound parameter) and
percent-encoded in Redis keys (``orchestrator:memory:<quoted id>``), so ids with ``:``, ``%`` or any unicode can
neither collide nor reach into another key.

A store that cannot be used at load/append/clear time raises `UpstreamUnavailableError`; the orchestrator then
answers the turn without history. A Redis that is down at start leaves the memory not ready, but its client is
kept: turns work again (and the memory reports ready) as soon as Redis answers.

`trim_to_budget` picks what of a history goes with a turn: the newest messages within ``MEMORY_MAX_TOKENS``
(approximate counts, no tokenizer download), starting on a user message, tool results kept with their call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote

import redis
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage, message_to_dict, trim_messages
from langchain_core.messages.utils import count_tokens_approximately
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy import Index, MetaData, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateIndex, CreateTable

from services.common.errors import InvalidRequestError, UpstreamUnavailableError
from services.common.settings import redact_url
from services.orchestrator_enhanced.settings import Settings

with warnings.catch_warnings():  # importing the package warns that it is being sunset; these stores are still its
    warnings.simplefilter("ignore", DeprecationWarning)
    from langchain_community.chat_message_histories import RedisChatMessageHistory, SQLChatMessageHistory
    from langchain_community.chat_message_histories.sql import DefaultMessageConverter
    from langchain_community.utilities.redis import get_client

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_SESSION_ID_CHARS = 128
"""Longest session id accepted (the app's own rule is stricter: letters, digits and ``._:@-``)."""

SQL_TABLE = "message_store"
"""Table of `SqliteMemory` (``SQLChatMessageHistory``'s default name)."""

REDIS_CONNECT_TIMEOUT_S = 2.0
"""Most seconds to open a connection to Redis; past it the call fails (the turn goes on without history)."""

REDIS_SOCKET_TIMEOUT_S = 5.0
"""Most seconds one Redis command may wait for its answer."""


@runtime_checkable
class ConversationMemory(Protocol):
    """Per-session chat history; also a `services.common.app.Component`, so /health/ready reports it."""

    name: str

    async def start(self) -> None:
        """Open the store (create the file and table / connect); raises with the reason when it cannot."""
        ...

    def ready(self) -> bool: ...

    async def aclose(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        """``{"engine": "sqlite" | "redis", "location": <file path | URL without credentials>}``."""
        ...

    async def load(self, session_id: str) -> list[BaseMessage]:
        """The session's whole stored history, oldest first (empty for an unknown session)."""
        ...

    async def append(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        """Add one turn's messages at the end, all or none, never interleaved with another append."""
        ...

    async def clear(self, session_id: str) -> None:
        """Forget the session's history."""
        ...


def _check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not 1 <= len(session_id) <= MAX_SESSION_ID_CHARS:
        raise InvalidRequestError(f"session id must be 1-{MAX_SESSION_ID_CHARS} characters", param="session_id")
    try:
        session_id.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: no store can keep them
        raise InvalidRequestError("session id is not valid unicode text", param="session_id") from None
    return session_id


class _SessionLocks:
    """One asyncio lock per session while anyone holds or waits on it (weak values: idle sessions cost nothing).
    asyncio locks are FIFO, so the appends of one process to one session land in call order."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def __call__(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock


# --- SQLite ---------------------------------------------------------------------------------------------------


class SqliteMemory:
    """Conversation memory in a SQLite file (``SQLChatMessageHistory``, async mode). Ready once the file, table
    and index exist; a new instance on the same file sees everything stored before."""

    name = "memory"

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0, start_wait_s: float = 30.0) -> None:
        """``busy_timeout_s``: how long a write waits for another process's write to finish before failing.
        ``start_wait_s``: how long `start` keeps trying while the file is locked by another process (see there)."""
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.start_wait_s = start_wait_s
        self._engine: AsyncEngine | None = None
        self._ready = False
        self._locks = _SessionLocks()
        # one model class for every history object (the default converter declares a new one per instance)
        self._converter = DefaultMessageConverter(SQL_TABLE)
        model = self._converter.get_sql_model_class()
        Index(f"{SQL_TABLE}_session_id", model.session_id)  # created with the table by _create_if_missing

    async def start(self) -> None:
        """Open the file, switch it to WAL and create what is missing. Processes that open one new file at once
        (orchestrator and orchestrator-enhanced under `make run`) contend for it, and the first writes to a new
        file (the WAL switch, the table) can fail with "database is locked" at once: SQLite skips its busy wait
        where two connections that each read and then want to write would deadlock. So a locked file is tried
        again, with backoff, for ``start_wait_s``."""
        try:
            await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise UpstreamUnavailableError(f"conversation memory: cannot create the directory of SQLite database "
                                           f"{self.path}: {exc}") from exc
        engine = create_async_engine(URL.create("sqlite+aiosqlite", database=str(self.path)),
                                     connect_args={"timeout": self.busy_timeout_s})
        event.listen(engine.sync_engine, "connect", _sqlite_wal)
        give_up = time.monotonic() + self.start_wait_s
        pause = 0.02
        while True:
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(_create_if_missing, self._converter.get_sql_model_class().metadata)
                break
            except SQLAlchemyError as exc:
                reason = getattr(exc, "orig", None) or exc
                busy = getattr(reason, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY  # "database is locked"
                if busy and time.monotonic() + pause < give_up:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    continue
                await engine.dispose()
                raise UpstreamUnavailableError(f"conversation memory: cannot open SQLite database {self.path}: "
                                               f"{reason}") from exc
        self._engine = engine
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    async def aclose(self) -> None:
        self._ready = False
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    def describe(self) -> dict[str, Any]:
        return {"engine": "sqlite", "location": str(self.path)}

    def _history(self, session_id: str) -> SQLChatMessageHistory:
        _check_session_id(session_id)
        if self._engine is None:
            raise UpstreamUnavailableError(f"conversation memory (SQLite {self.path}) is not open: it has not "
                                           "started, failed to start or was closed")
        return SQLChatMessageHistory(session_id=session_id, connection=self._engine,
                                     custom_message_converter=self._converter)

    def _failed(self, what: str, exc: SQLAlchemyError) -> UpstreamUnavailableError:
        return UpstreamUnavailableError(f"conversation memory (SQLite {self.path}) failed to {what}: "
                                        f"{getattr(exc, 'orig', None) or exc}")

    async def load(self, session_id: str) -> list[BaseMessage]:
        history = self._history(session_id)
        try:
            return await history.aget_messages()
        except SQLAlchemyError as exc:
            raise self._failed("read", exc) from exc

    async def append(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        history = self._history(session_id)
        if not messages:
            return
        async with self._locks(session_id):
            try:
                await history.aadd_messages(list(messages))  # one transaction
            except SQLAlchemyError as exc:
                raise self._failed("write", exc) from exc

    async def clear(self, session_id: str) -> None:
        history = self._history(session_id)
        async with self._locks(session_id):
            try:
                await history.aclear()
            except SQLAlchemyError as exc:
                raise self._failed("clear", exc) from exc


def _create_if_missing(conn: Any, metadata: MetaData) -> None:
    """The table and its index, as ``CREATE ... IF NOT EXISTS``: processes sharing one new file (orchestrator and
    orchestrator-enhanced start together) race between ``create_all``'s existence check and its CREATE, and
    the loser would fail with "table message_store already exists"."""
    for table in metadata.sorted_tables:
        conn.execute(CreateTable(table, if_not_exists=True))
        for index in table.indexes:
            conn.execute(CreateIndex(index, if_not_exists=True))


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """Every new connection: WAL journaling (readers never wait for a writer, nor a writer for readers)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


# --- Redis ----------------------------------------------------------------------------------------------------


def redis_key(key_prefix: str, session_id: str) -> str:
    """The Redis list of a session: the prefix and the percent-encoded id (ASCII, no ``:``), so no two ids share
    a key and no id reaches outside the prefix."""
    return key_prefix + quote(session_id, safe="")


class _RedisHistory(RedisChatMessageHistory):
    """``RedisChatMessageHistory`` on the memory's shared client, with an escaped key and one transaction per
    append. Reading (``messages``: LRANGE, newest pushed first, reversed) and ``clear`` (DEL) are the base
    class's, so what is stored stays the kept store's format.

    What differs, and why: the base constructor builds a new client and connection pool per instance (with a
    cluster-probe round trip, and a silently unusable object when Redis is down); its ``add_messages`` pushes
    message by message, so a concurrent writer (another replica) can land between a turn's messages; and it
    puts the session id verbatim in the key.
    """

    def __init__(self, client: redis.Redis, session_id: str, *, key_prefix: str, ttl_s: int) -> None:
        # no super().__init__(): see the class docstring (BaseChatMessageHistory itself keeps no state)
        self.redis_client = client
        self.session_id = session_id
        self.key_prefix = key_prefix
        self.ttl = ttl_s or None

    @property
    def key(self) -> str:
        return redis_key(self.key_prefix, self.session_id)

    def add_message(self, message: BaseMessage) -> None:
        self.add_messages([message])

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """All of ``messages`` in one MULTI/EXEC, the expiry refreshed in the same transaction."""
        if not messages:
            return
        with self.redis_client.pipeline(transaction=True) as pipe:
            pipe.lpush(self.key, *(json.dumps(message_to_dict(m)) for m in messages))
            if self.ttl:
                pipe.expire(self.key, self.ttl)
            pipe.execute()


class RedisMemory:
    """Conversation memory in Redis, shared by every replica that points at the same server and prefix."""

    name = "memory"

    def __init__(self, url: str, *, ttl_s: int = 0, key_prefix: str = "orchestrator:memory:") -> None:
        """``ttl_s`` > 0: a session's history expires that many seconds after its last append (0: kept forever)."""
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        self.url = url
        self.ttl_s = ttl_s
        self.key_prefix = key_prefix
        self._client: redis.Redis | None = None
        self._ready = False
        self._locks = _SessionLocks()

    @property
    def location(self) -> str:
        return redact_url(self.url)

    def _connect(self) -> redis.Redis:
        try:
            return get_client(self.url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
                              socket_timeout=REDIS_SOCKET_TIMEOUT_S,
                              retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1))
        except ValueError as exc:
            raise ValueError(f"conversation memory: {self.location} is not a Redis URL "
                             f"(redis://, rediss://, unix://, redis+sentinel://): {exc}") from None

    async def start(self) -> None:
        if self._client is None:
            self._client = await asyncio.to_thread(self._connect)
        try:
            await asyncio.to_thread(self._client.ping)
        except redis.RedisError as exc:
            raise UpstreamUnavailableError(f"conversation memory: Redis at {self.location} is unreachable: "
                                           f"{type(exc).__name__}: {exc}") from exc
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    async def aclose(self) -> None:
        self._ready = False
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    def describe(self) -> dict[str, Any]:
        return {"engine": "redis", "location": self.location}

    def _history(self, session_id: str) -> _RedisHistory:
        _check_session_id(session_id)
        if self._client is None:
            raise UpstreamUnavailableError(f"conversation memory (Redis {self.location}) is not connected: it has "
                                           "not started or was closed")
        return _RedisHistory(self._client, session_id, key_prefix=self.key_prefix, ttl_s=self.ttl_s)

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            result = await asyncio.to_thread(fn)
        except redis.RedisError as exc:
            raise UpstreamUnavailableError(f"conversation memory (Redis {self.location}) failed to {what}: "
                                           f"{type(exc).__name__}: {exc}") from exc
        if not self._ready:  # Redis was down at start and answers now
            log.info("conversation memory: Redis at %s answers again", self.location)
            self._ready = True
        return result

    async def load(self, session_id: str) -> list[BaseMessage]:
        history = self._history(session_id)
        return await self._call("read", lambda: history.messages)

    async def append(self, session_id: str, messages: Sequence[BaseMessage]) -> None:
        history = self._history(session_id)
        if not messages:
            return
        batch = list(messages)
        async with self._locks(session_id):
            await self._call("write", lambda: history.add_messages(batch))

    async def clear(self, session_id: str) -> None:
        history = self._history(session_id)
        async with self._locks(session_id):
            await self._call("clear", history.clear)


# --- choosing and trimming -------------------------------------------------------------------------------------


def build_memory(settings: Settings) -> ConversationMemory:
    """Redis when ``MEMORY_URL``/``REDIS_URL`` is set (with ``MEMORY_TTL_S``), else SQLite at
    ``settings.memory_path()`` (its directories are created on start)."""
    if settings.memory_url:
        return RedisMemory(settings.memory_url, ttl_s=settings.memory_ttl_s)
    return SqliteMemory(settings.memory_path())


TRIM_BLOCK = 8
"""Messages dropped at a time once a history outgrows its budget (see `trim_to_budget`)."""


def trim_to_budget(messages: Sequence[BaseMessage], max_tokens: int) -> list[BaseMessage]:
    """The newest messages of ``messages`` (a session's whole stored history) whose approximate token count fits
    in ``max_tokens``, dropped from the oldest end, starting on a user message (so a tool result never loses the
    AI message that called it); empty when not even the last turn's tail fits on a user message.

    Old messages go in blocks of `TRIM_BLOCK` (the first kept message is at a multiple of it in the stored
    history, or the next user message after that), not one turn at a time: a history that starts at the same
    message turn after turn keeps the LLM server's cached prompt valid, where dropping the oldest turn every
    turn would make it evaluate the whole conversation again each time (tens of seconds on a CPU)."""
    if max_tokens <= 0 or not messages:
        return []
    messages = list(messages)
    kept = trim_messages(messages, max_tokens=max_tokens, token_counter=count_tokens_approximately,
                         strategy="last", start_on="human", allow_partial=False, include_system=False)
    start = len(messages) - len(kept)
    if kept and start > 0:
        aligned = -(-start // TRIM_BLOCK) * TRIM_BLOCK
        human = next((i for i in range(aligned, len(messages)) if isinstance(messages[i], HumanMessage)), None)
        if human is not None:
            kept = messages[human:]
    return _without_orphan_tool_results(kept)


def _without_orphan_tool_results(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """Drop tool results whose call is not among the earlier messages (only a damaged history has them; chat
    APIs refuse them)."""
    called: set[str] = set()
    out: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, AIMessage):
            called.update(call["id"] for call in message.tool_calls if call.get("id"))
        elif isinstance(message, ToolMessage) and message.tool_call_id not in called:
            continue
        out.append(message)
    return out
