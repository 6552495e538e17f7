"""The agent loop on LangChain's real ``create_agent`` with scripted chat models (the LLM is the only double) and
the real tools: tool calls execute and their results reach the answer; tool errors are spoken honestly; the
fallback LLM takes over from a failing primary and turns go back to the primary when it recovers."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from prometheus_client import REGISTRY

from services.common import context
from services.common.errors import ServiceError
from services.common.metrics import service
from services.common.testing import free_port
from services.orchestrator_enhanced.agent import NO_ANSWER, Agent, AgentAnswer, TextDelta, ToolCalled, load_system_prompt
from services.orchestrator_enhanced.settings import Settings
from services.orchestrator_enhanced.testing import ScriptedChatModel, call_tool, say
from services.orchestrator_enhanced.tools import build_tools
from services.orchestrator_enhanced.turn import TurnContext

CTX = TurnContext("session-1", user_id="u1", channel_id="c1")
NOON = datetime(2026, 11, 24, 12, 5, tzinfo=timezone.utc)


NO_TOOL = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}
"""The ``allowed_tools`` tool choice that lets the model call no tool."""


def settings(**kw) -> Settings:
    kw.setdefault("local_intents", False)  # these tests drive the model loop; tests/.../test_intents.py the rules
    kw.setdefault("tool_selection", "all")  # every tool bound (test_intents.py: which ones a request gets)
    return Settings(_env_file=None, **kw)


def make_agent(primary, fallback=None, **kw) -> Agent:
    s = settings(**kw)
    return Agent(s, primary=primary, fallback=fallback, tools=build_tools(s, clock=lambda: NOON),
                 system_prompt=load_system_prompt(s))


def connection_error() -> openai.APIConnectionError:
    return openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions"))


def fallbacks(stage: str, reason: str) -> float:
    return REGISTRY.get_sample_value("orchestrator_fallbacks_total",
                                     {"service": service(), "stage": stage, "reason": reason}) or 0.0


def last_tool_result(messages) -> AIMessage:
    tool = next(m for m in reversed(messages) if isinstance(m, ToolMessage))
    return AIMessage(f"Here you go: {tool.content}")


async def test_a_tool_call_really_runs_and_its_result_reaches_the_answer():
    model = ScriptedChatModel(script=[call_tool("Calculator", expression="12 times 7"), last_tool_result],
                              model_name="llm-flan")
    answer = await make_agent(model).run("what is 12 times 7", [], CTX)
    assert "84" in answer.text and answer.text.startswith("Here you go:")
    assert [c.name for c in answer.tool_calls] == ["Calculator"] and answer.tool_calls[0].ok
    assert "84" in answer.tool_calls[0].result
    # the model's second call saw the tool's result, and every call had the tools that can work bound
    assert any(isinstance(m, ToolMessage) and "84" in m.content for m in model.calls[1])
    assert model.bound_tools[0] == ["GetCurrentTime", "Calculator"]
    assert answer.llm_engine == "llm-flan"
    assert [type(m).__name__ for m in answer.messages] == ["AIMessage", "ToolMessage", "AIMessage"]


async def test_the_time_tool_answers_in_the_configured_zone():
    model = ScriptedChatModel(script=[call_tool("GetCurrentTime"), last_tool_result])
    answer = await make_agent(model, assistant_timezone="Europe/Berlin").run("what time is it", [], CTX)
    assert "1:05" in answer.text and "PM" in answer.text  # 12:05 UTC is 13:05 in Berlin in November


async def test_a_failing_tool_is_said_honestly_even_when_the_model_does_not_mention_it():
    model = ScriptedChatModel(script=[call_tool("SearchWeb", query="weather in Paris"),
                                      say("Is there anything else?")])
    dead = f"http://127.0.0.1:{free_port()}/search"
    answer = await make_agent(model, search_url=dead).run("search the weather in Paris", [], CTX)
    assert answer.tool_calls[0].ok is False
    assert "couldn't reach the web search service" in answer.tool_calls[0].result
    assert answer.text.startswith("Is there anything else?")
    assert answer.text.endswith("I couldn't reach the web search service just now, so I can't look that up.")
    assert "Traceback" not in answer.text and "Exception" not in answer.text


async def test_a_model_that_says_nothing_after_a_tool_is_answered_by_the_tool():
    model = ScriptedChatModel(script=[call_tool("Calculator", expression="2 + 2"), say("")])
    answer = await make_agent(model).run("two plus two", [], CTX)
    assert "4" in answer.text


async def test_a_model_that_says_nothing_at_all_gets_an_apology_not_silence():
    answer = await make_agent(ScriptedChatModel(script=[say("")])).run("hm", [], CTX)
    assert answer.text == NO_ANSWER


async def test_the_last_allowed_step_has_no_tools_so_a_looping_model_still_answers():
    loop = call_tool("Calculator", expression="1 + 1")
    model = ScriptedChatModel(script=[loop, loop, say("done")])
    answer = await make_agent(model, agent_max_steps=3).run("loop", [], CTX)
    assert len(model.calls) == 3
    # the third call may call no tool (the tools stay in the prompt, for the LLM server's prompt cache)
    assert model.tool_choices == [None, None, NO_TOOL]
    assert answer.text.startswith("done") and len(answer.tool_calls) == 2


async def test_a_repeated_tool_call_ends_the_tool_rounds():
    same = call_tool("Calculator", expression="1 + 1")
    model = ScriptedChatModel(script=[same, same, say("two"), say("never reached")])
    answer = await make_agent(model, agent_max_steps=6).run("loop", [], CTX)
    assert len(model.calls) == 3 and model.tool_choices == [None, None, NO_TOOL]  # the third may call none
    assert answer.text.startswith("two")


async def test_stream_yields_deltas_then_tool_events_then_one_answer_that_starts_with_the_deltas():
    model = ScriptedChatModel(script=[call_tool("Calculator", expression="6 * 7"),
                                      lambda msgs: say("The answer is 42. Anything else?")])
    events = [e async for e in make_agent(model).stream("six times seven", [], CTX)]
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "ToolCalled" and kinds[-1] == "AgentAnswer"
    deltas = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert len([e for e in events if isinstance(e, TextDelta)]) > 1  # streamed sentence by sentence
    answer = events[-1]
    assert isinstance(answer, AgentAnswer) and answer.text == deltas == "The answer is 42. Anything else?"
    assert isinstance(events[0], ToolCalled) and events[0].call.name == "Calculator"


async def test_history_reaches_the_model_before_the_new_message():
    model = ScriptedChatModel(script=[say("You said your name is Ada.")])
    history = [HumanMessage("My name is Ada."), AIMessage("Nice to meet you, Ada.")]
    await make_agent(model).run("What is my name?", history, CTX)
    sent = model.calls[0]
    assert [m.content for m in sent[1:]] == ["My name is Ada.", "Nice to meet you, Ada.", "What is my name?"]
    assert "Atlas" in sent[0].content  # the v1.0 system prompt


def test_prompt_versions_are_files_and_an_unknown_version_is_a_clear_error(tmp_path):
    assert "voice assistant" in load_system_prompt(settings())
    (tmp_path / "v2.0.md").write_text("You are Bolt.")
    assert load_system_prompt(settings(prompts_dir=tmp_path, prompt_version="v2.0")) == "You are Bolt."
    with pytest.raises(ValueError, match=r"v9\.9.*versions available: v2\.0"):
        load_system_prompt(settings(prompts_dir=tmp_path, prompt_version="v9.9"))


async def test_direct_mode_binds_no_tools():
    model = ScriptedChatModel(script=[say("Hello there.")])
    agent = make_agent(model, enable_langchain=False)
    answer = await agent.run("hi", [], CTX)
    assert agent.mode == "direct" and agent.tools == []
    assert answer.text == "Hello there." and model.bound_tools in ([], [[]])


# --- failover ---------------------------------------------------------------------------------------------


async def test_a_primary_that_cannot_be_reached_is_replaced_by_the_fallback():
    primary = ScriptedChatModel(script=[say("primary")], model_name="llm-flan", fail_with=connection_error())
    fallback = ScriptedChatModel(script=[say("fallback answer")], model_name="llm")
    before = fallbacks("llm", "unavailable")
    answer = await make_agent(primary, fallback).run("hi", [], CTX)
    assert answer.text == "fallback answer" and answer.llm_engine == "llm"
    assert fallbacks("llm", "unavailable") == before + 1


async def test_a_slow_primary_times_out_into_the_fallback_within_the_turn():
    primary = ScriptedChatModel(script=[say("late")], model_name="llm-flan", delay_s=5)
    fallback = ScriptedChatModel(script=[say("in time")], model_name="llm")
    before = fallbacks("llm", "timeout")
    token = context.set_deadline(context.Deadline.after(3.0))
    try:
        answer = await make_agent(primary, fallback, llm_primary_timeout_s=0.3).run("hi", [], CTX)
    finally:
        context.reset_deadline(token)
    assert answer.text == "in time" and fallbacks("llm", "timeout") == before + 1


async def test_tool_calls_work_on_the_fallback_too():
    primary = ScriptedChatModel(model_name="llm-flan", fail_with=connection_error())
    fallback = ScriptedChatModel(script=[call_tool("Calculator", expression="3 + 4"), last_tool_result],
                                 model_name="llm")
    answer = await make_agent(primary, fallback).run("3 plus 4", [], CTX)
    assert "7" in answer.text and answer.llm_engine == "llm"


async def test_breaker_skips_a_dead_primary_then_turns_go_back_to_it_when_it_recovers():
    primary = ScriptedChatModel(script=[say("primary again")], model_name="llm-flan",
                                fail_with=connection_error(), fail_times=2)
    fallback = ScriptedChatModel(script=[say("fallback")], model_name="llm")
    agent = make_agent(primary, fallback, breaker_failure_threshold=2, breaker_reset_s=0.3)
    before = fallbacks("llm", "circuit_open")
    engines = [(await agent.run("hi", [], CTX)).llm_engine for _ in range(3)]
    assert engines == ["llm", "llm", "llm"]
    assert len(primary.calls) == 2  # the third turn did not even try the open-circuit primary
    assert fallbacks("llm", "circuit_open") == before + 1
    await asyncio.sleep(0.35)
    answer = await agent.run("hi", [], CTX)  # the probe: the primary answers again
    assert answer.llm_engine == "llm-flan" and answer.text == "primary again"
    assert (await agent.run("hi", [], CTX)).llm_engine == "llm-flan"


async def test_both_llms_failing_is_a_service_error_naming_the_cause():
    primary = ScriptedChatModel(model_name="llm-flan", fail_with=connection_error())
    fallback = ScriptedChatModel(model_name="llm", fail_with=connection_error())
    with pytest.raises(ServiceError) as err:
        await make_agent(primary, fallback).run("hi", [], CTX)
    assert err.value.http_status == 503 and "no LLM could answer" in err.value.message


async def test_no_fallback_configured_raises_the_primary_error():
    primary = ScriptedChatModel(model_name="llm-flan", fail_with=connection_error())
    with pytest.raises(ServiceError, match="no LLM could answer"):
        await make_agent(primary, None, llm_fallback_url=None).run("hi", [], CTX)
