"""What the assistant answers, on a real model: the agent as the service builds it (prompt v2.0, tools, tool
selection, local intents, spoken filter) against the llm service serving the bundled Qwen2.5-Coder-0.5B-Instruct
(the default bundled model; the 1.5B answers the same, slower). These
pin the behaviours that depend on the model: a fact from its own knowledge without a tool, one short answer
said once, a follow-up that needs the previous turn. scripts/eval_assistant.py measures the same on 70 requests.
"""

from __future__ import annotations

import re

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from services.common.testing import serve_in_thread, wait_ready
from services.llm.app import create_app as create_llm_app
from services.llm.settings import Settings as LlmSettings
from services.orchestrator_enhanced.agent import Agent, AgentAnswer, PromptWarmer, TextDelta, load_system_prompt
from services.orchestrator_enhanced.llm import build_models
from services.orchestrator_enhanced.settings import Settings
from services.orchestrator_enhanced.spoken import split_sentences
from services.orchestrator_enhanced.tools import build_tools
from services.orchestrator_enhanced.turn import TurnContext


@pytest.fixture(scope="module")
def llm_url():
    llm = LlmSettings(_env_file=None, llm_bundled_model="qwen2.5-coder-0.5b", llm_n_ctx=2048, llm_max_tokens=96,
                      llm_prompt_cache=True)
    with serve_in_thread(create_llm_app(llm)) as url:
        wait_ready(url, timeout_s=600)
        yield url


@pytest.fixture
def agent(llm_url):
    """The agent as the service builds it; one per test (its HTTP client belongs to the test's event loop)."""
    s = Settings(_env_file=None, llm_primary_url=llm_url, llm_fallback_url=None, llm_primary_model="llm",
                 llm_max_tokens=96, llm_temperature=0.0)
    primary, _ = build_models(s)
    return Agent(s, primary=primary, fallback=None, tools=build_tools(s), system_prompt=load_system_prompt(s))


async def ask(agent: Agent, text: str, history=()) -> tuple[list[str], AgentAnswer]:
    deltas, answer = [], None
    async for event in agent.stream(text, list(history), TurnContext("assistant")):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        elif isinstance(event, AgentAnswer):
            answer = event
    assert answer is not None
    assert "".join(deltas) == answer.text, "what was streamed is not what the answer says"
    return deltas, answer


def sentences(text: str) -> list[str]:
    return [re.sub(r"\W+", " ", s).strip().lower() for s in split_sentences(text, final=True)[0] if s.strip()]


async def test_the_prompt_is_warmed_up_on_the_real_server(agent):
    warmer = PromptWarmer(agent)
    assert len(warmer.models) == 1  # the primary; no fallback configured here
    await warmer.start()
    assert warmer.warmed == ["llm"] and warmer.ready()


async def test_a_fact_is_answered_from_the_models_knowledge_without_a_tool(agent):
    _, answer = await ask(agent, "What is the capital of France?")
    assert "paris" in answer.text.lower(), answer.text
    assert answer.tool_calls == [] and answer.llm_engine == "llm"
    said = sentences(answer.text)
    assert 1 <= len(said) <= 2 and len(set(said)) == len(said), answer.text  # short, each sentence once
    assert not re.search(r"functions\.|\{\s*\"|message:|\*\*|#", answer.text), answer.text


async def test_small_talk_gets_a_short_reply_and_no_tool(agent):
    _, answer = await ask(agent, "Thanks for your help!")
    assert answer.tool_calls == [] and answer.text.strip(), answer.text
    assert len(answer.text.split()) <= 30 and len(set(sentences(answer.text))) == len(sentences(answer.text))


async def test_a_follow_up_uses_the_previous_turn(agent):
    history = [HumanMessage("My name is Alex."), AIMessage("Nice to meet you, Alex.")]
    _, answer = await ask(agent, "What is my name?", history)
    assert "alex" in answer.text.lower(), answer.text


async def test_the_same_agent_answers_exact_requests_locally(agent):
    _, answer = await ask(agent, "What is 12 times 7?")
    assert answer.text == "12 times 7 is 84." and answer.llm_engine == "local-intent"
    _, answer = await ask(agent, "Set a timer for ten minutes.")
    assert answer.text.startswith("Sorry, I can't set timers") and answer.tool_calls == []
