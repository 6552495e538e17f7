"""The agent's tools against real HTTP doubles of Discord and SearXNG (uvicorn in a thread), run the way the
agent runs them: through langgraph's ToolNode (runtime injected from the turn's context) or as tool calls."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolCall, ToolMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from services.common import context, http
from services.common.http import close_shared_client
from services.common.testing import serve_in_thread
from services.orchestrator_enhanced.settings import Settings
from services.orchestrator_enhanced.tools import DISCORD_MAX_CHARS, build_tools
from services.orchestrator_enhanced.turn import TurnContext

TOKEN = "s3cret-token"
NOW = datetime(2026, 11, 24, 15, 5, tzinfo=timezone.utc)

# --- network doubles ----------------------------------------------------------------------------------------------


@dataclass
class Double:
    url: str
    calls: list[dict[str, Any]] = field(default_factory=list)


def discord_app(calls: list[dict[str, Any]]) -> FastAPI:
    """Discord's ``POST /channels/{id}/messages``. Channel ``status-NNN`` answers NNN, ``slow`` sleeps 2 s."""
    app = FastAPI()

    @app.post("/channels/{channel_id}/messages")
    async def create_message(channel_id: str, request: Request) -> Any:
        body = await request.json()
        calls.append({"channel_id": channel_id, "body": body, "headers": dict(request.headers)})
        if channel_id.startswith("status-"):
            return JSONResponse({"message": "Unknown Channel", "code": 10003}, status_code=int(channel_id[7:]))
        if channel_id == "slow":
            await asyncio.sleep(2.0)
        return {"id": "900", "channel_id": channel_id, "content": body["content"]}

    return app


RESULTS = [
    {"title": "Mars rover finds water", "content": "NASA's rover found <b>ice</b> &amp; water near the pole.",
     "url": "https://example.org/1"},
    {"title": "Second result", "content": "word " * 80, "url": "https://example.org/2"},
    {"title": "Third result", "content": "The third snippet.", "url": "https://example.org/3"},
    {"title": "", "content": "", "url": "https://example.org/empty"},
    {"title": "Fourth result", "content": "The fourth snippet.", "url": "https://example.org/4"},
]


def searxng_app(calls: list[dict[str, Any]]) -> FastAPI:
    """SearXNG's JSON search at /search and /custom/find; the query ``nothing``, ``boom``, ``slow``, ``html``,
    ``forbidden`` picks the answer; without ``format=json`` it answers 403 as SearXNG does."""
    app = FastAPI()

    @app.get("/search")
    @app.get("/custom/find")
    async def search(request: Request) -> Any:
        params = dict(request.query_params)
        calls.append({"path": request.url.path, "params": params, "headers": dict(request.headers)})
        query = params.get("q")
        if params.get("format") != "json" or query == "forbidden":
            return PlainTextResponse("Forbidden", status_code=403)
        if query == "nothing":
            return {"query": query, "number_of_results": 0, "results": []}
        if query == "boom":
            return PlainTextResponse("Internal Server Error", status_code=500)
        if query == "slow":
            await asyncio.sleep(2.0)
        if query == "html":
            return PlainTextResponse("<html>not json</html>")
        return {"query": query, "number_of_results": 0, "results": RESULTS}

    return app


@pytest.fixture(scope="module")
def discord_server() -> Iterator[Double]:
    calls: list[dict[str, Any]] = []
    with serve_in_thread(discord_app(calls)) as url:
        yield Double(url, calls)


@pytest.fixture(scope="module")
def search_server() -> Iterator[Double]:
    calls: list[dict[str, Any]] = []
    with serve_in_thread(searxng_app(calls)) as url:
        yield Double(url, calls)


@pytest.fixture
def discord(discord_server: Double) -> Double:
    discord_server.calls.clear()
    return discord_server


@pytest.fixture
def searxng(search_server: Double) -> Double:
    search_server.calls.clear()
    return search_server


@pytest.fixture(autouse=True)
async def _fresh_clients(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Circuit breakers are shared per target in the process: each test starts with none, and no pool."""
    monkeypatch.setattr(http, "_breakers", {})
    yield
    await close_shared_client()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- helpers: settings, tools, the agent's ways of running a tool ---------------------------------------------------


def make_settings(**kw: Any) -> Settings:
    kw.setdefault("tools_timeout_s", 5.0)
    kw.setdefault("discord_api_url", None)
    kw.setdefault("discord_default_channel_id", None)
    kw.setdefault("search_url", None)
    kw.setdefault("service_auth_token", None)
    kw.setdefault("assistant_timezone", "UTC")
    return Settings(_env_file=None, **kw)


def tool_named(settings: Settings, name: str, clock: Any = None) -> BaseTool:
    return next(t for t in build_tools(settings, clock=clock) if t.name == name)


async def call(tool: BaseTool, **args: Any) -> ToolMessage:
    """Invoke ``tool`` with a ToolCall, as the agent's ToolNode does for tools without injected arguments."""
    message = await tool.ainvoke({"type": "tool_call", "id": "call-1", "name": tool.name, "args": args})
    assert isinstance(message, ToolMessage)
    assert message.tool_call_id == "call-1"
    return message


async def call_in_graph(tool: BaseTool, args: dict[str, Any], turn: TurnContext | None = None) -> ToolMessage:
    """Run one tool call through a real ``ToolNode`` in a graph with ``context_schema=TurnContext`` (what
    ``create_agent`` builds), so ``runtime: ToolRuntime`` is injected the real way."""
    graph = StateGraph(MessagesState, context_schema=TurnContext)
    graph.add_node("tools", ToolNode([tool]))
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    tool_call = ToolCall(name=tool.name, args=args, id="call-1", type="tool_call")
    state = await graph.compile().ainvoke(
        {"messages": [AIMessage(content="", tool_calls=[tool_call])]},
        context=turn or TurnContext(session_id="session-1"),
    )
    message = state["messages"][-1]
    assert isinstance(message, ToolMessage)
    assert message.tool_call_id == "call-1"
    return message


def content(message: ToolMessage) -> str:
    assert isinstance(message.content, str)
    return message.content


def assert_honest_error(message: ToolMessage, *fragments: str) -> None:
    """An error ToolMessage whose content is one clean sentence containing ``fragments``."""
    assert message.status == "error"
    text = content(message)
    for fragment in fragments:
        assert fragment in text, text
    for leak in ("http", "127.0.0.1", "Error", "Traceback", TOKEN):
        assert leak not in text, text
    assert text.endswith(".") and text.count(". ") == 0, text


# --- the tool set ---------------------------------------------------------------------------------------------------


def test_only_the_tools_that_can_work_are_offered() -> None:
    """Without DISCORD_API_URL or SEARCH_URL those tools could only say "not configured": a small model offered
    them calls them instead of answering, so they are not offered at all."""
    assert [t.name for t in build_tools(make_settings())] == ["GetCurrentTime", "Calculator"]
    assert [t.name for t in build_tools(make_settings(search_url="http://127.0.0.1:1/search"))] == [
        "SearchWeb", "GetCurrentTime", "Calculator"]
    assert [t.name for t in build_tools(make_settings(discord_api_url="http://127.0.0.1:1"))] == [
        "SendDiscordMessage", "GetCurrentTime", "Calculator"]


def test_four_tools_with_model_facing_schemas_and_no_runtime_argument() -> None:
    tools = build_tools(make_settings(discord_api_url="http://127.0.0.1:1", search_url="http://127.0.0.1:1/search"))
    assert [t.name for t in tools] == ["SendDiscordMessage", "SearchWeb", "GetCurrentTime", "Calculator"]
    schemas = {t.name: convert_to_openai_tool(t)["function"] for t in tools}
    assert set(schemas["SendDiscordMessage"]["parameters"]["properties"]) == {"message", "channel_id"}
    assert schemas["SendDiscordMessage"]["parameters"]["required"] == ["message"]
    assert set(schemas["SearchWeb"]["parameters"]["properties"]) == {"query"}
    assert set(schemas["GetCurrentTime"]["parameters"]["properties"]) == {"timezone"}
    assert set(schemas["Calculator"]["parameters"]["properties"]) == {"expression"}
    for tool in tools:
        assert tool.handle_tool_error is True
        assert "Use it" in tool.description and len(tool.description) < 300


async def test_agent_runs_a_tool_with_the_turns_channel(discord: Double) -> None:
    """create_agent + a scripted model: the model's tool call reaches Discord at the TurnContext's channel."""

    class ScriptedModel(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:  # type: ignore[override]
            return self

    script = [
        AIMessage(content="", tool_calls=[ToolCall(name="SendDiscordMessage", args={"message": "Lunch at 12"},
                                                   id="call-7", type="tool_call")]),
        AIMessage(content="Done, I posted it."),
    ]
    agent = create_agent(
        ScriptedModel(messages=iter(script)),
        build_tools(make_settings(discord_api_url=discord.url, discord_default_channel_id="999")),
        context_schema=TurnContext,
    )
    state = await agent.ainvoke(
        {"messages": [HumanMessage("Tell the team lunch is at 12")]},
        context=TurnContext(session_id="s-1", channel_id="555"),
    )
    tool_message = next(m for m in state["messages"] if isinstance(m, ToolMessage))
    assert tool_message.status == "success" and tool_message.content == "I sent that to Discord."
    assert state["messages"][-1].content == "Done, I posted it."
    assert [(c["channel_id"], c["body"]) for c in discord.calls] == [("555", {"content": "Lunch at 12"})]


# --- SendDiscordMessage ---------------------------------------------------------------------------------------------


async def test_discord_posts_discords_shape_with_bearer_and_correlation_id(discord: Double) -> None:
    tool = tool_named(make_settings(discord_api_url=discord.url, service_auth_token=TOKEN), "SendDiscordMessage")
    token = context.set_correlation_id("corr-tools-1")
    try:
        message = await call_in_graph(tool, {"message": "  Hello team  ", "channel_id": "123456"})
    finally:
        context.reset_correlation_id(token)
    assert message.status == "success"
    assert message.content == "I sent that to Discord."
    assert len(discord.calls) == 1
    sent = discord.calls[0]
    assert sent["channel_id"] == "123456"
    assert sent["body"] == {"content": "Hello team"}
    assert sent["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert sent["headers"]["x-correlation-id"] == "corr-tools-1"
    assert 0 < int(sent["headers"]["x-deadline-ms"]) <= 5000  # the tool timeout bounds the call


@pytest.mark.parametrize(
    ("argument", "turn_channel", "default", "expected"),
    [
        ("111", "222", "333", "111"),
        (None, "222", "333", "222"),
        ("", "222", "333", "222"),
        ("null", None, "333", "333"),
        (None, None, "333", "333"),
        ("<#444>", "222", "333", "444"),
        ("#555", None, None, "555"),
    ],
)
async def test_discord_channel_precedence(
    discord: Double, argument: str | None, turn_channel: str | None, default: str | None, expected: str
) -> None:
    tool = tool_named(make_settings(discord_api_url=discord.url, discord_default_channel_id=default),
                      "SendDiscordMessage")
    args: dict[str, Any] = {"message": "hi"}
    if argument is not None:
        args["channel_id"] = argument
    message = await call_in_graph(tool, args, TurnContext(session_id="s", channel_id=turn_channel))
    assert message.status == "success"
    assert [c["channel_id"] for c in discord.calls] == [expected]


async def test_discord_without_any_channel_says_so(discord: Double) -> None:
    tool = tool_named(make_settings(discord_api_url=discord.url), "SendDiscordMessage")
    message = await call_in_graph(tool, {"message": "hi"}, TurnContext(session_id="s"))
    assert_honest_error(message, "which Discord channel")
    assert discord.calls == []


async def test_discord_malformed_channel_is_refused_without_a_call(discord: Double) -> None:
    tool = tool_named(make_settings(discord_api_url=discord.url, discord_default_channel_id="333"),
                      "SendDiscordMessage")
    message = await call_in_graph(tool, {"message": "hi", "channel_id": "../../guilds/1"})
    assert_honest_error(message, "channel id")
    assert discord.calls == []


async def test_discord_message_length_limit(discord: Double) -> None:
    tool = tool_named(make_settings(discord_api_url=discord.url, discord_default_channel_id="1"),
                      "SendDiscordMessage")
    too_long = await call_in_graph(tool, {"message": "a" * (DISCORD_MAX_CHARS + 1)})
    assert_honest_error(too_long, "2001 characters", "2000")
    assert discord.calls == []  # not silently truncated either
    at_limit = await call_in_graph(tool, {"message": "b" * DISCORD_MAX_CHARS})
    assert at_limit.status == "success"
    assert discord.calls[0]["body"]["content"] == "b" * DISCORD_MAX_CHARS


async def test_discord_empty_message_is_not_posted(discord: Double) -> None:
    tool = tool_named(make_settings(discord_api_url=discord.url, discord_default_channel_id="1"),
                      "SendDiscordMessage")
    assert_honest_error(await call_in_graph(tool, {"message": "   "}), "nothing to send")
    assert discord.calls == []


@pytest.mark.parametrize(
    ("status", "sentence"),
    [
        (404, "Discord doesn't know that channel, so the message wasn't sent."),
        (403, "I'm not allowed to post in that Discord channel, so the message wasn't sent."),
        (400, "Discord refused the message, so it wasn't sent."),
        (500, "Discord had a problem just now, so the message wasn't sent."),
        (503, "Discord had a problem just now, so the message wasn't sent."),
    ],
)
async def test_discord_http_errors_become_sentences_and_posts_are_not_retried(
    discord: Double, status: int, sentence: str
) -> None:
    tool = tool_named(make_settings(discord_api_url=discord.url, http_retries=3), "SendDiscordMessage")
    message = await call_in_graph(tool, {"message": "hi", "channel_id": f"status-{status}"})
    assert_honest_error(message)
    assert message.content == sentence
    assert len(discord.calls) == 1  # a POST is sent once, even for a retryable 503


async def test_discord_unreachable() -> None:
    tool = tool_named(make_settings(discord_api_url=closed_port_url(), discord_default_channel_id="1"),
                      "SendDiscordMessage")
    message = await call_in_graph(tool, {"message": "hi"})
    assert_honest_error(message)
    assert message.content == "I couldn't reach Discord just now, so the message wasn't sent."


async def test_discord_timeout_is_honest_about_not_knowing(discord: Double) -> None:
    tool = tool_named(make_settings(discord_api_url=discord.url, tools_timeout_s=0.3), "SendDiscordMessage")
    message = await call_in_graph(tool, {"message": "hi", "channel_id": "slow"})
    assert_honest_error(message, "didn't answer in time", "not sure")


async def test_discord_bad_arguments_become_a_sentence(discord: Double) -> None:
    tool = tool_named(make_settings(discord_api_url=discord.url, discord_default_channel_id="1"),
                      "SendDiscordMessage")
    message = await call_in_graph(tool, {"channel_id": "1"})  # the model forgot the message
    assert_honest_error(message, "message")
    assert discord.calls == []


async def test_discord_outside_a_tool_node_has_no_runtime_and_fails_softly(discord: Double) -> None:
    """A plain ToolCall gets no ToolRuntime: the tool answers an error sentence instead of raising."""
    tool = tool_named(make_settings(discord_api_url=discord.url, discord_default_channel_id="1"),
                      "SendDiscordMessage")
    message = await call(tool, message="hi")
    assert_honest_error(message, "send that to Discord")
    assert discord.calls == []


# --- SearchWeb ------------------------------------------------------------------------------------------------------


async def test_search_gives_top_results_compactly(searxng: Double) -> None:
    tool = tool_named(make_settings(search_url=searxng.url, search_max_results=2), "SearchWeb")
    message = await call(tool, query="  mars   water ")
    assert message.status == "success"
    lines = content(message).splitlines()
    assert lines[0] == 'Web search for "mars water": 4 results, top 2:'  # the empty result is not counted
    assert lines[1] == "1. Mars rover finds water: NASA's rover found ice & water near the pole."
    assert lines[2].startswith("2. Second result: word word")
    assert lines[2].endswith("…") and len(lines[2]) <= len("2. Second result: ") + 220
    assert len(lines) == 3 and "Third" not in message.content and "https://" not in message.content
    assert searxng.calls[0]["path"] == "/search"
    assert searxng.calls[0]["params"] == {"q": "mars water", "format": "json"}


async def test_search_keeps_the_configured_path_and_parameters(searxng: Double) -> None:
    tool = tool_named(make_settings(search_url=f"{searxng.url}/custom/find?categories=news", search_max_results=5,
                                    service_auth_token=TOKEN), "SearchWeb")
    message = await call(tool, query="mars")
    assert message.status == "success"
    assert content(message).splitlines()[0] == 'Web search for "mars": 4 results:'
    assert len(content(message).splitlines()) == 5
    assert searxng.calls[0]["path"] == "/custom/find"
    assert searxng.calls[0]["params"] == {"categories": "news", "q": "mars", "format": "json"}
    assert searxng.calls[0]["headers"]["authorization"] == f"Bearer {TOKEN}"


async def test_search_no_results(searxng: Double) -> None:
    message = await call(tool_named(make_settings(search_url=searxng.url), "SearchWeb"), query="nothing")
    assert message.status == "success"
    assert message.content == 'The web search found nothing for "nothing".'


@pytest.mark.parametrize(
    ("query", "sentence"),
    [
        ("boom", "The web search service had a problem just now, so I can't look that up."),
        ("html", "The web search service gave an answer I couldn't read, so I can't look that up."),
    ],
)
async def test_search_upstream_failures(searxng: Double, query: str, sentence: str) -> None:
    message = await call(tool_named(make_settings(search_url=searxng.url), "SearchWeb"), query=query)
    assert_honest_error(message)
    assert message.content == sentence


async def test_search_refused(searxng: Double) -> None:
    """SearXNG answers 403 when its settings do not enable the json format; ours is always asked for."""
    tool = tool_named(make_settings(search_url=f"{searxng.url}/search?format=html"), "SearchWeb")
    message = await call(tool, query="forbidden")
    assert_honest_error(message)
    assert message.content == "The web search service turned the request down, so I can't look that up."
    assert searxng.calls[0]["params"] == {"q": "forbidden", "format": "json"}  # ours wins over the configured one
    assert len(searxng.calls) == 1  # a 403 is final


async def test_search_timeout(searxng: Double) -> None:
    tool = tool_named(make_settings(search_url=searxng.url, tools_timeout_s=0.3), "SearchWeb")
    message = await call(tool, query="slow")
    assert_honest_error(message)
    assert message.content == "The web search took too long to answer, so I can't look that up right now."


async def test_search_unreachable() -> None:
    tool = tool_named(make_settings(search_url=closed_port_url(), http_retries=0), "SearchWeb")
    message = await call(tool, query="mars")
    assert_honest_error(message)
    assert message.content == "I couldn't reach the web search service just now, so I can't look that up."


async def test_search_empty_query_is_not_sent(searxng: Double) -> None:
    message = await call(tool_named(make_settings(search_url=searxng.url), "SearchWeb"), query="   ")
    assert_honest_error(message, "anything to search for")
    assert searxng.calls == []


# --- GetCurrentTime -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "zone", "default", "expected"),
    [
        (NOW, None, "UTC", "It's 3:05 PM on Tuesday, 24 November 2026 in UTC."),
        (NOW, "Europe/Berlin", "UTC", "It's 4:05 PM on Tuesday, 24 November 2026 in Europe/Berlin."),
        (NOW, None, "America/New_York", "It's 10:05 AM on Tuesday, 24 November 2026 in America/New_York."),
        (NOW, "", "Europe/Berlin", "It's 4:05 PM on Tuesday, 24 November 2026 in Europe/Berlin."),
        (datetime(2026, 11, 24, 23, 30, tzinfo=timezone.utc), "Europe/Berlin", "UTC",
         "It's 12:30 AM on Wednesday, 25 November 2026 in Europe/Berlin."),
        (datetime(2026, 7, 1, 11, 0, tzinfo=timezone.utc), "Europe/Berlin", "UTC",  # summer time
         "It's 1:00 PM on Wednesday, 1 July 2026 in Europe/Berlin."),
        (datetime(2026, 1, 5, 0, 7, tzinfo=timezone.utc), "utc", "Europe/Berlin",
         "It's 12:07 AM on Monday, 5 January 2026 in UTC."),
        (NOW, "berlin", "UTC", "It's 4:05 PM on Tuesday, 24 November 2026 in Europe/Berlin."),
        (NOW, "America/New York", "UTC", "It's 10:05 AM on Tuesday, 24 November 2026 in America/New_York."),
    ],
)
async def test_current_time(now: datetime, zone: str | None, default: str, expected: str) -> None:
    tool = tool_named(make_settings(assistant_timezone=default), "GetCurrentTime", clock=lambda: now)
    message = await call(tool, **({} if zone is None else {"timezone": zone}))
    assert message.status == "success"
    assert message.content == expected


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd"])
async def test_current_time_unknown_zone(zone: str) -> None:
    tool = tool_named(make_settings(), "GetCurrentTime", clock=lambda: NOW)
    message = await call(tool, timezone=zone)
    assert message.status == "error"
    assert message.content == f'I don\'t know a time zone called "{zone}", so I can\'t tell the time there.'


async def test_current_time_uses_the_system_clock_by_default() -> None:
    before = datetime.now(timezone.utc)
    message = await call(tool_named(make_settings(), "GetCurrentTime"), timezone="UTC")
    assert message.status == "success"
    assert f"{before.year} in UTC." in message.content or f"{before.year + 1} in UTC." in message.content


# --- Calculator -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "answer"),
    [
        ("12 times 7", "12 times 7 is 84."),
        ("What is 3 plus 4?", "3 plus 4 is 7."),
        ("10 divided by 4", "10 divided by 4 is 2.5."),
        ("2 to the power of 8", "2 to the power of 8 is 256."),
        ("15 percent of 80", "15 percent of 80 is 12."),
        ("15% of 80", "15% of 80 is 12."),
        ("6 x 7", "6 x 7 is 42."),
        ("6x7", "6x7 is 42."),
        ("1,250 minus 250", "1,250 minus 250 is 1,000."),
        ("twenty-five times four", "twenty-five times four is 100."),
        ("one hundred and five minus 5", "one hundred and five minus 5 is 100."),
        ("three point five times 2", "three point five times 2 is 7."),
        ("the square root of 144", "the square root of 144 is 12."),
        ("sqrt(2)", "sqrt(2) is about 1.41421."),
        ("7 squared", "7 squared is 49."),
        ("10 mod 3", "10 mod 3 is 1."),
        ("10 % 3", "10 % 3 is 1."),
        ("50%", "50% is 0.5."),
        ("(3 + 4) * 2", "(3 + 4) * 2 is 14."),
        ("-5 + 2", "-5 + 2 is -3."),
        ("7 // 2", "7 // 2 is 3."),
        ("2 ^ 10", "2 ^ 10 is 1,024."),
        ("1 / 3", "1 / 3 is about 0.333333."),
        ("0.1 + 0.2", "0.1 + 0.2 is 0.3."),
        ("max(3, 9, 2) - min(4, 1)", "max(3, 9, 2) - min(4, 1) is 8."),
        ("round(2.567, 2)", "round(2.567, 2) is 2.57."),
        ("round(2.5)", "round(2.5) is 3."),  # half up, as people round
        ("abs(-4.5)", "abs(-4.5) is 4.5."),
        ("2 * pi", "2 * pi is about 6.28319."),
        ("3e20 * 2", "3e20 * 2 is 6 times 10 to the power of 20."),
        ("12 × 3 ÷ 4 =", "12 × 3 ÷ 4 is 9."),
    ],
)
async def test_calculator(expression: str, answer: str) -> None:
    message = await call(tool_named(make_settings(), "Calculator"), expression=expression)
    assert message.status == "success"
    assert message.content == answer


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('true')", "only work out arithmetic"),
        ("open('/etc/passwd')", "only work out arithmetic"),
        ("foo + 1", "only work out arithmetic"),
        ("(1).__class__", "only work out arithmetic"),
        ("'a' * 3", "only work out arithmetic"),
        ("True + 1", "only work out arithmetic"),
        ("[1, 2]", "only work out arithmetic"),
        ("lambda: 1", "only work out arithmetic"),
        ("round(2.5, ndigits=1)", "only work out arithmetic"),
        ("2**99999", "too big"),
        ("10 ** 10 ** 10", "too big"),
        ("(2 ** 4000) ** 2", "too big"),
        ("0.5 ** -100000", "too big"),
        ("1e999", "too big"),
        ("1 / 0", "dividing by zero"),
        ("5 % 0", "dividing by zero"),
        ("sqrt(-1)", "no real square root"),
        ("(-8) ** 0.5", "no real-number answer"),
        ("round(1.5, 99)", "decimal places"),
        ("max()", "max takes 1 to 20 numbers"),
        ("3 +", "couldn't understand"),
        ("x", "couldn't understand"),
        ("?", "wasn't given anything"),
        ("1 + " * 60 + "1", "longer than 200 characters"),
    ],
)
async def test_calculator_refusals(expression: str, reason: str) -> None:
    message = await call(tool_named(make_settings(), "Calculator"), expression=expression)
    assert_honest_error(message, reason)
