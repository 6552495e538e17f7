"""The agent on real LLM servers: LangChain's ``ChatOpenAI`` (as the service builds it) against the fleet's llm
service (SmolLM2-135M-Instruct on llama.cpp, the fastest bundled model: these tests are about wiring, not
answers; tests/orchestrator_enhanced/test_assistant.py holds those), served for real on a free port, tools bound.
Checks what scripted models cannot: streamed tokens are not doubled by the final message, the answering server
is named, a primary on a dead port fails over to the real fallback, and the turn's correlation id and
deadline reach the LLM server."""

from __future__ import annotations

import pytest
from fastapi import Request

from services.common import context
from services.common.testing import free_port, serve_in_thread, wait_ready
from services.llm.app import create_app as create_llm_app
from services.llm.settings import Settings as LlmSettings
from services.orchestrator_enhanced.agent import Agent, AgentAnswer, TextDelta, load_system_prompt
from services.orchestrator_enhanced.llm import build_models
from services.orchestrator_enhanced.settings import Settings
from services.orchestrator_enhanced.tools import build_tools
from services.orchestrator_enhanced.turn import TurnContext

seen_headers: list[dict[str, str]] = []


@pytest.fixture(scope="module")
def llm_url():
    app = create_llm_app(LlmSettings(_env_file=None, llm_bundled_model="smollm2-135m", llm_n_ctx=1024, llm_max_tokens=48))

    @app.middleware("http")
    async def record(request: Request, call_next):
        if request.url.path.endswith("/chat/completions"):
            seen_headers.append({k.lower(): v for k, v in request.headers.items()})
        return await call_next(request)

    with serve_in_thread(app) as url:
        wait_ready(url)
        yield url


def agent_for(primary_url: str, fallback_url: str | None, **kw) -> Agent:
    s = Settings(_env_file=None, llm_primary_url=primary_url, llm_fallback_url=fallback_url,
                 llm_primary_model="llm", llm_fallback_model="llm", llm_max_tokens=32, **kw)
    primary, fallback = build_models(s)
    return Agent(s, primary=primary, fallback=fallback, tools=build_tools(s), system_prompt=load_system_prompt(s))


async def run_streamed(agent: Agent, text: str) -> tuple[list[str], AgentAnswer]:
    deltas, answer = [], None
    async for event in agent.stream(text, [], TurnContext("real-llm")):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        elif isinstance(event, AgentAnswer):
            answer = event
    assert answer is not None
    return deltas, answer


async def test_streamed_sentences_add_up_to_the_answer_once(llm_url):
    deltas, answer = await run_streamed(agent_for(llm_url, None, enable_langchain=False),
                                        "Write three short sentences about cats.")
    assert len(deltas) > 1, "the answer was not streamed sentence by sentence"
    assert "".join(deltas) == answer.text and answer.text.strip()
    assert answer.llm_engine == "llm"


async def test_a_dead_primary_fails_over_to_the_real_fallback_with_tools_bound(llm_url):
    agent = agent_for(f"http://127.0.0.1:{free_port()}", llm_url, local_intents=False)
    deltas, answer = await run_streamed(agent, "What is 12 times 7?")
    assert answer.llm_engine == "llm"
    assert answer.text.strip() and "".join(deltas) == answer.text
    for call in answer.tool_calls:  # whatever SmolLM2 chose, a tool call ran and answered in words
        assert call.name in {"GetCurrentTime", "Calculator"} and call.result  # only the tools that can work


async def test_the_correlation_id_and_deadline_reach_the_llm_server(llm_url):
    seen_headers.clear()
    cid = context.set_correlation_id("turn-abc-123")
    dl = context.set_deadline(context.Deadline.after(30))
    try:
        await agent_for(llm_url, None, enable_langchain=False).run("Hi.", [], TurnContext("real-llm"))
    finally:
        context.reset_deadline(dl)
        context.reset_correlation_id(cid)
    assert seen_headers, "no chat completion reached the server"
    headers = seen_headers[-1]
    assert headers.get("x-correlation-id") == "turn-abc-123"
    assert 0 < int(headers["x-deadline-ms"]) <= 30_000
