"""Local intents (time, date, arithmetic, unit conversions, what the assistant cannot do): recognised only when the
whole request is one, and answered by the tool (or one honest sentence) without asking the LLM; everything else
reaches the model unchanged, offered only the tools it may need."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from langchain_core.messages import HumanMessage

from services.orchestrator_enhanced.agent import LOCAL_ENGINE, Agent, TextDelta, ToolCalled, load_system_prompt
from services.orchestrator_enhanced.intents import Intent, match, offered
from services.orchestrator_enhanced.settings import Settings
from services.orchestrator_enhanced.testing import ScriptedChatModel, say
from services.orchestrator_enhanced.tools import build_tools
from services.orchestrator_enhanced.turn import TurnContext

CTX = TurnContext("intents")
NOON = datetime(2026, 11, 24, 12, 5, tzinfo=timezone.utc)


def make_agent(model: ScriptedChatModel, **kw) -> Agent:
    s = Settings(_env_file=None, **kw)
    return Agent(s, primary=model, fallback=None, tools=build_tools(s, clock=lambda: NOON),
                 system_prompt=load_system_prompt(s))


@pytest.mark.parametrize(("text", "intent"), [
    ("What time is it?", Intent("GetCurrentTime", {})),
    ("Hey, what's the time right now?", Intent("GetCurrentTime", {})),
    ("Can you tell me what time it is in New York please?", Intent("GetCurrentTime", {"timezone": "America/New_York"})),
    ("What time is it in Tokyo?", Intent("GetCurrentTime", {"timezone": "Asia/Tokyo"})),
    ("What's the date today?", Intent("GetCurrentTime", {})),
    ("What day of the week is it?", Intent("GetCurrentTime", {})),
    ("What is 12 times 7?", Intent("Calculator", {"expression": "what is 12 times 7"})),
    ("Add 25 and 17.", Intent("Calculator", {"expression": "25 plus 17"})),
    ("Subtract 8 from 20", Intent("Calculator", {"expression": "20 minus 8"})),
    ("What is the square root of 81?", Intent("Calculator", {"expression": "what is the square root of 81"})),
    ("What is 10 divided by 0?", Intent("Calculator", {"expression": "what is 10 divided by 0"})),
])
def test_requests_a_rule_answers_exactly_are_recognised(text, intent):
    assert match(text) == intent


@pytest.mark.parametrize(("text", "answer"), [
    ("How many metres are in 5 kilometres?", "5 kilometres is 5,000 metres."),
    ("How many grams is one kilogram?", "1 kilogram is 1,000 grams."),
    ("How many seconds are there in an hour?", "1 hour is 3,600 seconds."),
    ("How many ounces in a pound?", "1 pound is 16 ounces."),
    ("Convert 100 degrees Celsius to Fahrenheit.", "100 degrees Celsius is 212 degrees Fahrenheit."),
    ("What's 10 miles in kilometres?", "10 miles is about 16.0934 kilometres."),
])
def test_unit_conversions_are_answered_exactly(text, answer):
    intent = match(text)
    assert intent is not None and intent.tool == "Calculator" and intent.answer == answer


@pytest.mark.parametrize("text", [
    "What is the capital of France?",
    "What is 7?",  # a number, not a calculation
    "How many people live in Paris?",
    "How many legs does a spider have?",
    "What time is it in Narnia?",  # no such zone: the model may still know what is meant
    "Now add 8 to that.",  # no previous answer to add to: the model's job
    "Thanks, but what about Spain?",
    "What can you do about the noise?",
    "Tell me a joke.",
    "Call me Alex from now on.",
    "What is a stock?",
    "Who played Hamlet in the first production?",
    "Convert 5 kilograms to metres.",  # not the same kind of unit
    "What is one third of 90?",
    "",
])
def test_anything_else_goes_to_the_model(text):
    assert match(text) is None


async def test_a_local_intent_is_answered_by_the_tool_without_the_llm():
    model = ScriptedChatModel(script=[say("the model must not be asked")])
    events = [e async for e in make_agent(model).stream("What is 12 times 7?", [], CTX)]
    assert model.calls == []
    assert [type(e).__name__ for e in events] == ["ToolCalled", "TextDelta", "AgentAnswer"]
    call, delta, answer = events[0], events[1], events[2]
    assert isinstance(call, ToolCalled) and call.call.name == "Calculator" and call.call.ok
    assert isinstance(delta, TextDelta) and delta.text == answer.text == "12 times 7 is 84."
    assert answer.llm_engine == LOCAL_ENGINE and [c.name for c in answer.tool_calls] == ["Calculator"]
    assert [m.content for m in answer.messages] == ["12 times 7 is 84."]  # what memory keeps for a follow-up


async def test_the_time_intent_uses_the_tools_clock_and_zone():
    model = ScriptedChatModel()
    answer = await make_agent(model, assistant_timezone="Europe/Berlin").run("what's the time?", [], CTX)
    assert answer.text == "It's 1:05 PM on Tuesday, 24 November 2026 in Europe/Berlin." and model.calls == []
    answer = await make_agent(model).run("What time is it in Tokyo?", [], CTX)
    assert answer.text == "It's 9:05 PM on Tuesday, 24 November 2026 in Asia/Tokyo."


async def test_a_refused_calculation_is_said_honestly():
    answer = await make_agent(ScriptedChatModel()).run("What is 10 divided by 0?", [], CTX)
    assert answer.text == "That would mean dividing by zero, which has no answer."
    assert answer.tool_calls[0].ok is False and answer.llm_engine == LOCAL_ENGINE


async def test_with_local_intents_off_the_model_gets_every_request():
    model = ScriptedChatModel(script=[say("Eighty-four.")])
    answer = await make_agent(model, local_intents=False).run("What is 12 times 7?", [], CTX)
    assert answer.text == "Eighty-four." and len(model.calls) == 1 and answer.llm_engine == "scripted"


async def test_local_intents_also_answer_in_direct_mode():
    model = ScriptedChatModel()
    agent = make_agent(model, enable_langchain=False)
    assert agent.tools == [] and agent.mode == "direct"
    assert (await agent.run("What is 6 times 7?", [], CTX)).text == "6 times 7 is 42." and model.calls == []


@pytest.mark.parametrize(("previous", "text", "expression"), [
    ("6 times 7 is 42.", "Now add 8 to that.", "42 plus 8"),
    ("6 times 7 is 42.", "And multiply it by 3", "42 times 3"),
    ("6 times 7 is 42.", "plus five", "42 plus five"),
    ("6 times 7 is 42.", "What's that divided by 2?", "what's 42 divided by 2"),
    ("144 divided by 12 is 12.", "Double that.", "2 times 12"),
    ("5 kilometres is 5,000 metres.", "Subtract 200 from that", "5000 minus 200"),
    ("The answer is 1,234.5.", "now take 34.5 away from it", "1234.5 minus 34.5"),
])
def test_a_calculation_on_the_previous_answer_is_recognised(previous, text, expression):
    assert match(text, previous=previous) == Intent("Calculator", {"expression": expression})


@pytest.mark.parametrize(("previous", "text"), [
    ("The capital of France is Paris.", "Now add 8 to that."),  # no number to work on
    ("It's 5:17 PM on Saturday, 5 December 2026 in UTC.", "Add 8 to that."),  # a date is not a result
    ("Water boils at 100 degrees Celsius.", "Double that."),
    ("6 times 7 is 42.", "Is that right?"),
    ("6 times 7 is 42.", "What is it?"),
    ("6 times 7 is 42.", "Convert that to Roman numerals."),
    (None, "Plus five."),
])
def test_a_follow_up_without_a_number_to_work_on_goes_to_the_model(previous, text):
    assert match(text, previous=previous) is None


async def test_memory_carries_a_calculation_into_the_next_turn():
    model = ScriptedChatModel(script=[say("the model must not be asked")])
    agent = make_agent(model)
    first = await agent.run("What is 6 times 7?", [], CTX)
    history = [HumanMessage("What is 6 times 7?"), *first.messages]
    second = await agent.run("Now add 8 to that.", history, CTX)
    assert second.text == "42 plus 8 is 50." and second.llm_engine == LOCAL_ENGINE and model.calls == []
    third = await agent.run("Now add 8 to that.", [], CTX)  # a new conversation: nothing to add to
    assert third.text == "the model must not be asked" and len(model.calls) == 1


@pytest.mark.parametrize("text", ["Thanks!", "Thank you so much.", "Thanks for your help!", "Cheers, that's all."])
def test_thanks_are_answered_without_the_model(text):
    assert match(text) == Intent(None, answer="You're welcome.")


async def test_what_the_assistant_can_do_follows_its_tools():
    model = ScriptedChatModel()
    plain = await make_agent(model).run("What can you do?", [], CTX)
    assert plain.text == ("I'm Atlas, a voice assistant running on this computer. I can answer questions from "
                          "what I know, do arithmetic and unit conversions and tell you the time and date anywhere.")
    searching = await make_agent(model, search_url="http://127.0.0.1:9/search").run("Who are you?", [], CTX)
    assert "search the web" in searching.text and "Discord" not in searching.text
    direct = await make_agent(model, enable_langchain=False).run("what can you do", [], CTX)
    assert direct.text == ("I'm Atlas, a voice assistant running on this computer. "
                           "I can answer questions from what I know.")
    assert model.calls == []


@pytest.mark.parametrize(("text", "says"), [
    ("Set a timer for ten minutes.", "timers"),
    ("Could you please set an alarm for 7 am?", "alarms"),
    ("Remind me to buy milk tomorrow.", "reminders"),
    ("Wake me up at seven tomorrow.", "alarms"),
    ("Turn off the lights in the kitchen.", "lights"),
    ("Switch the heating on.", "heating"),
    ("Set the thermostat to 21 degrees.", "devices"),
    ("Play some jazz music.", "music"),
    ("Play my favourite podcast.", "podcasts"),
    ("Call my mom.", "phone calls"),
    ("Search the web for today's news about the Mars rover.", "online"),
    ("What's the weather forecast for Berlin tomorrow?", "weather"),
    ("What's the Apple stock price right now?", "prices"),
    ("Send a message to the team saying the build is green.", "send messages"),
    ("Post 'lunch is ready' on Discord.", "send messages"),
    ("Tell the team on Discord that I'm running late.", "send messages"),
])
def test_what_the_assistant_cannot_do_is_said_plainly(text, says):
    intent = match(text)
    assert intent is not None and intent.tool is None and says in (intent.answer or "")
    assert intent.answer.startswith("Sorry, I can't")


@pytest.mark.parametrize(("text", "tool"), [
    ("Search the web for today's news about the Mars rover.", "SearchWeb"),
    ("What's the weather forecast for Berlin tomorrow?", "SearchWeb"),
    ("Send a message to the team saying the build is green.", "SendDiscordMessage"),
])
def test_web_and_messages_go_to_the_model_when_their_tool_is_offered(text, tool):
    assert match(text, {tool}) is None
    assert match(text, {"Calculator"}) is not None


async def test_a_cannot_request_is_answered_without_the_llm_or_a_tool():
    model = ScriptedChatModel(script=[say("Timer set for ten minutes!")])  # what a small model would say
    answer = await make_agent(model).run("Set a timer for ten minutes.", [], CTX)
    assert answer.text == "Sorry, I can't set timers, alarms or reminders."
    assert model.calls == [] and answer.tool_calls == [] and answer.llm_engine == LOCAL_ENGINE


@pytest.mark.parametrize(("text", "tools"), [
    ("What is the capital of France?", []),
    ("Hello there!", []),
    ("What is H2O more commonly called?", []),
    ("Good morning!", []),
    ("How are you doing today?", []),
    ("What colour is the sky on a clear day?", []),
    ("What is my dog's name?", []),
    ("Now add 8 to that.", ["Calculator"]),
    ("Double that.", ["Calculator"]),
    ("What day is it tomorrow?", ["GetCurrentTime"]),
    ("How many hours until the year 2030?", ["GetCurrentTime", "Calculator"]),
])
def test_the_model_is_offered_only_the_tools_a_request_may_need(text, tools):
    assert offered(text, ["GetCurrentTime", "Calculator"]) == sorted(tools, key=["GetCurrentTime", "Calculator"].index)


def allowed(choice) -> list[str] | None:
    """Names an ``allowed_tools`` tool choice lets the model call; None: no such narrowing."""
    if not isinstance(choice, dict):
        return None
    return [t["function"]["name"] for t in choice["allowed_tools"]["tools"]]


async def test_the_agent_lets_the_model_call_only_the_relevant_tools_and_keeps_all_in_the_prompt():
    model = ScriptedChatModel(script=[say("Paris."), say("Fifty.")])
    agent = make_agent(model, local_intents=False)
    assert (await agent.run("What is the capital of France?", [], CTX)).text == "Paris."
    assert model.bound_tools[-1] == ["GetCurrentTime", "Calculator"]  # the prompt (and its cache) unchanged
    assert allowed(model.tool_choices[-1]) == []  # no tool to call for a fact
    assert (await agent.run("Double that.", [], CTX)).text == "Fifty."
    assert allowed(model.tool_choices[-1]) == ["Calculator"]
    everything = ScriptedChatModel(script=[say("Paris.")])
    await make_agent(everything, local_intents=False, tool_selection="all").run("What is the capital of France?",
                                                                                [], CTX)
    assert everything.bound_tools == [["GetCurrentTime", "Calculator"]] and allowed(everything.tool_choices[0]) is None
