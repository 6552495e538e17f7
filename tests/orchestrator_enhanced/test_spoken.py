"""What may be read aloud: complete sentences, each said once, no tool syntax, no markdown or emoji; and the agent
passes every answer through it, whatever the model wrote."""

from __future__ import annotations

import pytest

from services.orchestrator_enhanced.agent import NO_ANSWER, Agent, TextDelta, load_system_prompt
from services.orchestrator_enhanced.settings import Settings
from services.orchestrator_enhanced.spoken import SpokenFilter, plain
from services.orchestrator_enhanced.testing import ScriptedChatModel, call_tool, say
from services.orchestrator_enhanced.tools import build_tools
from services.orchestrator_enhanced.turn import TurnContext

CTX = TurnContext("spoken")


def feed_all(pieces: list[str]) -> tuple[list[str], SpokenFilter]:
    f = SpokenFilter()
    out = [f.feed(p) for p in pieces] + [f.flush()]
    return [o for o in out if o], f


def test_only_complete_sentences_pass_and_they_add_up_to_the_text():
    out, f = feed_all(["The capital", " of France is Paris", ". It is", " lovely", " in spring."])
    assert out == ["The capital of France is Paris.", " It is lovely in spring."]
    assert "".join(out) == f.text


def test_a_sentence_said_again_is_dropped_whatever_its_case_or_punctuation():
    out, f = feed_all(["I can't look that up. ", "Sorry! ", "i can't look that up ", "\n", "Sorry."])
    assert f.text == "I can't look that up. Sorry!"
    assert [why for why, _ in f.dropped] == ["repeat", "repeat"]


@pytest.mark.parametrize("leak", [
    'functions.Calculator:\n{"expression": "12 * 7"}',
    '{"query": "weather in Berlin"}',
    "<tool_call>SearchWeb</tool_call>",
    'SearchWeb(query="mars rover")',
])
def test_tool_syntax_is_never_read_out(leak):
    out, f = feed_all(["Let me check. ", leak, "\n", "It is sunny."])
    assert f.text == "Let me check. It is sunny." and f.dropped[0][0] == "tool_syntax"


def test_markdown_emoji_and_a_message_header_are_removed():
    assert plain("**Paris** is the capital 🇫🇷 😀") == "Paris is the capital"
    assert plain("message: Hello there.") == "Hello there."
    assert plain("- first point") == "first point" and plain("## Heading") == "Heading"
    assert plain("It costs 5 - 3 = 2 euros.") == "It costs 5 - 3 = 2 euros."


def agent(model: ScriptedChatModel) -> Agent:
    s = Settings(_env_file=None, local_intents=False)
    return Agent(s, primary=model, fallback=None, tools=build_tools(s), system_prompt=load_system_prompt(s))


async def test_a_model_that_loops_is_heard_once():
    model = ScriptedChatModel(script=[say("Paris is the capital of France. " * 4 + "Paris is the capital of France")])
    events = [e async for e in agent(model).stream("capital of France?", [], CTX)]
    answer = events[-1]
    assert answer.text == "Paris is the capital of France."
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == answer.text


async def test_a_call_written_as_text_is_not_read_out_and_the_turn_still_answers():
    model = ScriptedChatModel(script=[say('functions.SearchWeb:\n{"query": "mars"}')])
    answer = await agent(model).run("news about mars", [], CTX)
    assert answer.text == NO_ANSWER


async def test_a_tool_answer_the_model_repeats_is_said_once():
    model = ScriptedChatModel(script=[call_tool("Calculator", expression="2 + 2"),
                                      lambda msgs: say(f"{msgs[-1].content} {msgs[-1].content}")])
    answer = await agent(model).run("two plus two", [], CTX)
    assert answer.text == "2 + 2 is 4."
