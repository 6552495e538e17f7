"""llm engine layer against the real llama.cpp engine and the bundled SmolLM2-135M-Instruct (no fakes):
prompt rendering, context truncation, validation, seeds, tool-call grammars, the event stream, and what
happens when llama.cpp's process crashes.

Blocking methods (`build_prompt`, `events`) are called directly: the test is the engine's only user, so
no runner is needed; the HTTP path through the runner is covered by test_app.py. llama.cpp runs in the
engine's child process, so a native crash fails the test that caused it instead of ending the run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from services.common.app import Component
from services.common.errors import EngineNotReadyError, InvalidRequestError
from services.common.openai_chat import (
    ChatCompletionBody,
    ChatDelta,
    ChatEngine,
    ChatMessage,
    ChatRequest,
    FunctionDef,
    StreamStart,
    Usage,
)
from services.llm.engine import (
    MAX_CRASHES_IN_A_ROW,
    MESSAGE_HEADER,
    SEED_MODULUS,
    LlamaCppEngine,
    assemble,
    backend_info,
    choice_seed,
    header_gbnf,
    template_messages,
)
from services.llm.models import BUNDLED, parts
from services.llm.settings import Settings

N_CTX = 256
FAST = "smollm2-135m"  # the tests drive the engine, not the model: the fastest bundled one
CAP = 32
WEATHER = FunctionDef(
    name="get_weather", description="Get the current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                 "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"]},
)


@pytest.fixture(scope="module")
def engine() -> LlamaCppEngine:
    eng = LlamaCppEngine(Settings(_env_file=None, llm_bundled_model=FAST, llm_n_ctx=N_CTX, llm_max_tokens=CAP))
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.aclose())


def request(messages: list[dict], **kw) -> ChatRequest:
    return ChatRequest.from_body(ChatCompletionBody(model="llm", messages=messages, **kw))


def msgs(*pairs: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage(role=role, content=content) for role, content in pairs]


def call_msg(call_id: str, args: str = '{"city": "Oslo", "unit": "celsius"}') -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": args}}]}


# --- protocol and lifecycle ---------------------------------------------------------------------------------


def test_engine_implements_the_chat_engine_and_component_protocols(engine):
    assert isinstance(engine, ChatEngine) and isinstance(engine, Component)
    assert engine.name == "llama-cpp" and engine.ready()
    assert engine.model_ids() == ["SmolLM2-135M-Instruct", "llm"]
    info = engine.describe()
    assert info["model"] == "SmolLM2-135M-Instruct" and info["status"] == "ready" and info["n_ctx"] == N_CTX


def test_a_custom_gguf_is_served_under_its_file_stem(tmp_path):
    model = tmp_path / "tiny-chat.gguf"
    model.symlink_to(parts(BUNDLED[FAST])[0])
    eng = LlamaCppEngine(Settings(_env_file=None, llm_model_path=model, llm_n_ctx=N_CTX, llm_max_tokens=CAP))
    assert eng.model_ids() == ["tiny-chat", "llm"] and not eng.ready()
    assert eng.describe()["status"] == "loading"
    asyncio.run(eng.start())
    assert eng.ready()
    asyncio.run(eng.aclose())
    assert not eng.ready() and eng.describe()["status"] == "closed"
    with pytest.raises(EngineNotReadyError):
        list(eng.events(request([{"role": "user", "content": "hi"}])))


@pytest.mark.parametrize("name, needle", [("model.bin", "not a .gguf"), ("missing.gguf", "does not exist")])
def test_a_bad_model_path_fails_at_construction(tmp_path, name, needle):
    path = tmp_path / name
    if name.endswith(".bin"):
        path.write_bytes(b"x")
    with pytest.raises(ValueError, match=needle):
        LlamaCppEngine(Settings(_env_file=None, llm_model_path=path))


# --- prompt rendering ----------------------------------------------------------------------------------------


def test_developer_is_system_and_the_model_template_adds_its_default_system_prompt(engine):
    with_dev = engine.build_prompt(request([{"role": "developer", "content": "Be brief."},
                                            {"role": "user", "content": "Hi"}]), 8).text
    assert with_dev.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>")
    assert with_dev.endswith("<|im_start|>assistant\n")
    bare = engine.build_prompt(request([{"role": "user", "content": "Hi"}]), 8).text
    assert bare.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_tool_calls_and_results_are_rendered_in_the_function_calling_convention():
    history = [ChatMessage(role="user", content="Weather?"), ChatMessage(**call_msg("c1")),
               ChatMessage(role="tool", tool_call_id="c1", content='{"temp": 21}'),
               ChatMessage(role="assistant", content="It is 21 degrees.")]
    with_tools = template_messages(history, [WEATHER], "auto")
    assert with_tools[0]["role"] == "system" and "functions.get_weather:\n// Get the current" in with_tools[0]["content"]
    assert "message:\n<message>" in with_tools[0]["content"]
    assert with_tools[2] == {"role": "assistant",
                             "content": 'functions.get_weather:\n{"city": "Oslo", "unit": "celsius"}'}
    assert with_tools[3] == {"role": "tool", "content": 'functions.get_weather returned:\n{"temp": 21}'}
    assert with_tools[4]["content"] == MESSAGE_HEADER + "It is 21 degrees."
    without = template_messages(history, [], "none")
    assert [m["role"] for m in without] == ["user", "assistant", "tool", "assistant"]
    assert without[3]["content"] == "It is 21 degrees."


def test_tool_instructions_join_the_first_system_message():
    out = template_messages(msgs(("system", "Be brief."), ("user", "Hi")), [WEATHER], "required")
    assert out[0]["content"].startswith("Be brief.\n\nYou have access to the following functions:")
    assert "message:" not in out[0]["content"]  # required: a function call is the only answer
    named = template_messages(msgs(("user", "Hi")), [WEATHER], "get_weather")
    assert "Respond by calling functions.get_weather" in named[0]["content"]


def test_a_named_tool_choice_primes_the_answer_with_the_function(engine):
    req = request([{"role": "user", "content": "Weather in Oslo?"}],
                  tools=[{"type": "function", "function": WEATHER.model_dump(exclude_none=True)}],
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert engine.build_prompt(req, 8).text.endswith("<|im_start|>assistant\nfunctions.get_weather:\n")


# --- context truncation --------------------------------------------------------------------------------------


def history(turns: int) -> list[dict]:
    filler = "The committee reviewed the quarterly figures again and found nothing new to report."
    out = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        out += [{"role": "user", "content": f"Question {i:02d}. {filler}"},
                {"role": "assistant", "content": f"Answer {i:02d}. {filler}"}]
    return out


def test_the_oldest_turns_go_first_and_system_and_newest_stay(engine):
    messages = history(12) + [{"role": "user", "content": "Say ZANZIBARIAN."}]
    prompt = engine.build_prompt(request(messages), 16)
    assert 0 < prompt.dropped < 24 and len(prompt.tokens) + 16 <= N_CTX
    assert "You are terse." in prompt.text and "Say ZANZIBARIAN." in prompt.text
    assert "Question 00." not in prompt.text and "Answer 11." in prompt.text
    kept = [i for i in range(12) if f"Question {i:02d}." in prompt.text]
    assert kept == list(range(12 - len(kept), 12))  # a contiguous, newest block
    # no more than needed: with the last dropped message put back, one message has to go again
    again = engine.build_prompt(request(messages[:1] + messages[prompt.dropped:]), 16)
    assert again.dropped == 1 and again.tokens == prompt.tokens


def test_a_dropped_tool_call_takes_its_results_along(engine):
    filler = "Please check the weather for the usual city again, the same as always. " * 2
    messages = [{"role": "system", "content": "You are terse."}]
    for i in range(6):
        messages += [{"role": "user", "content": f"Q{i}. {filler}"},
                     call_msg(f"c{i}", f'{{"city": "City{i}", "unit": "celsius"}}'),
                     {"role": "tool", "tool_call_id": f"c{i}", "content": f'{{"temp": {i}}}'}]
    messages.append({"role": "user", "content": "And now?"})
    prompt = engine.build_prompt(request(messages), 16)
    assert prompt.dropped > 0 and "And now?" in prompt.text
    for i in range(6):
        assert (f'{{"temp": {i}}}' in prompt.text) == (f"City{i}" in prompt.text), prompt.text
    assert '{"temp": 0}' not in prompt.text and '{"temp": 5}' in prompt.text


def test_a_newest_message_that_alone_overflows_is_refused_with_the_sizes(engine):
    messages = history(2) + [{"role": "user", "content": "word " * 300}]
    with pytest.raises(InvalidRequestError, match=rf"alone take \d+ prompt tokens, plus max_tokens 16 .* > {N_CTX}"):
        engine.build_prompt(request(messages), 16)


# --- validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"max_tokens": CAP + 1}, f"at most {CAP} tokens per choice"),
        ({"messages": [{"role": "user", "content": "hi", "name": "ann"}]}, "participant names"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "x", "content": "1"}]},
         "no earlier assistant message made"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "stop": ["x"]}, "stop sequences cannot"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"$ref": "https://example.com/x.json"}}}}}]}, "cannot be turned"),
    ],
)
def test_validate_refuses_what_it_cannot_honour(engine, body, needle):
    body = {"messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(InvalidRequestError, match=needle):
        engine.validate(request(**body))


def test_validate_accepts_a_complete_tool_conversation(engine):
    engine.validate(request([{"role": "user", "content": "Weather?"}, call_msg("c1"),
                             {"role": "tool", "tool_call_id": "c1", "content": "21"}],
                            tools=[{"type": "function", "function": WEATHER.model_dump(exclude_none=True)}]))


def test_an_unparsable_grammar_is_an_error_not_a_crash(engine):
    with pytest.raises(InvalidRequestError, match="could not parse"):
        engine.call("check_grammar", "root ::= undefined-rule")


# --- sampling --------------------------------------------------------------------------------------------------


def test_choice_seeds():
    assert [choice_seed(41, i, 0.8) for i in range(3)] == [41, 42, 43]
    assert choice_seed(SEED_MODULUS, 0, 0.8) == 0 and choice_seed(-1, 0, 0.8) == SEED_MODULUS - 1
    assert choice_seed(None, 3, 0.0) == 0
    assert 0 <= choice_seed(None, 0, 0.8) < SEED_MODULUS


def test_header_grammar_offers_message_only_in_auto_mode():
    auto, headers = header_gbnf([WEATHER], "auto")
    assert headers == [MESSAGE_HEADER, "functions.get_weather:\n"] and '"message:\\n"' in auto
    required, headers = header_gbnf([WEATHER], "required")
    assert headers == ["functions.get_weather:\n"] and "message" not in required


def test_events_are_start_then_each_choice_in_turn_then_usage(engine):
    events = list(engine.events(request([{"role": "user", "content": "Hi"}], n=2, max_tokens=4, temperature=0)))
    assert isinstance(events[0], StreamStart) and isinstance(events[-1], Usage)
    deltas = [e for e in events[1:-1] if isinstance(e, ChatDelta)]
    assert len(deltas) == len(events) - 2
    indices = [d.index for d in deltas]
    assert indices == sorted(indices) and set(indices) == {0, 1}
    assert [d.index for d in deltas if d.finish_reason] == [0, 1]
    result = assemble(events)
    assert result.choices[0].text == result.choices[1].text  # greedy: same answer twice
    assert result.usage.completion_tokens <= 8 and result.usage.prompt_tokens == events[0].prompt_tokens


def test_choice_i_of_n_is_what_a_single_request_with_seed_plus_i_gets(engine):
    ask = [{"role": "user", "content": "Write a short poem about the sea."}]
    both = assemble(list(engine.events(request(ask, n=2, seed=10, temperature=0.8, max_tokens=12))))
    second = assemble(list(engine.events(request(ask, seed=11, temperature=0.8, max_tokens=12))))
    assert both.choices[1].text == second.choices[0].text


def test_max_tokens_inside_a_required_tool_header_ends_with_length(engine):
    req = request([{"role": "user", "content": "Weather in Oslo?"}], max_tokens=2, tool_choice="required",
                  tools=[{"type": "function", "function": WEATHER.model_dump(exclude_none=True)}])
    result = assemble(list(engine.events(req)))
    choice = result.choices[0]
    assert choice.finish_reason == "length" and choice.text == "" and choice.tool_calls is None
    assert result.usage.completion_tokens == 2


def test_max_tokens_inside_named_tool_arguments_ends_with_length(engine):
    req = request([{"role": "user", "content": "Weather in Oslo?"}], max_tokens=3, temperature=0,
                  tools=[{"type": "function", "function": WEATHER.model_dump(exclude_none=True)}],
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = assemble(list(engine.events(req))).choices[0]
    assert choice.finish_reason == "length" and choice.text is None
    (call,) = choice.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(call.function.arguments)  # cut short, as finish_reason says


def test_named_tool_arguments_follow_the_schema_at_any_temperature(engine):
    req = request([{"role": "user", "content": "Weather in Oslo?"}], max_tokens=CAP, temperature=1.5, seed=5,
                  tools=[{"type": "function", "function": WEATHER.model_dump(exclude_none=True)}],
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = assemble(list(engine.events(req))).choices[0]
    assert choice.finish_reason == "tool_calls"
    args = json.loads(choice.tool_calls[0].function.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit") and len(args["city"]) <= 24


@pytest.mark.parametrize("cache", [False, True])
def test_prompt_cache_keeps_the_kv_cache_between_requests_only_when_enabled(cache):
    """LLM_PROMPT_CACHE=false resets llama.cpp's state before every choice (exact temperature-0 reproducibility);
    true keeps it, so the next request only evaluates what follows the shared prefix."""
    eng = LlamaCppEngine(Settings(_env_file=None, llm_bundled_model=FAST, llm_n_ctx=N_CTX, llm_max_tokens=CAP, llm_prompt_cache=cache))
    asyncio.run(eng.start())
    try:
        ask = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
        first = assemble(list(eng.events(request(ask, max_tokens=4, temperature=0))))
        stats = eng.call("stats")  # the real llama.cpp reset calls, counted in the child
        second = assemble(list(eng.events(request(ask, max_tokens=4, temperature=0))))
        resets = eng.call("stats")["resets"] - stats["resets"]
    finally:
        asyncio.run(eng.aclose())
    assert eng.describe()["prompt_cache"] is cache
    assert stats["n_tokens"] > 0 and first.choices[0].text and second.choices[0].text
    # the second request starts from the first one's prefix (a prefix hit never resets) only with the cache on
    assert (resets == 0) is cache


def test_a_prompt_continues_from_the_longest_prefix_any_recent_request_left():
    """Two conversations taking turns: without saved states each request re-evaluates the other's whole
    prompt; with them the third request restores the first one's state and answers exactly as it did."""
    system = {"role": "system", "content": "You are terse. " * 30}
    a = [system, {"role": "user", "content": "Name a colour."}]
    b = [{"role": "system", "content": "You are verbose."}, {"role": "user", "content": "Name a fruit."}]
    eng = LlamaCppEngine(Settings(_env_file=None, llm_bundled_model=FAST, llm_n_ctx=N_CTX, llm_max_tokens=CAP,
                                  llm_prompt_cache=True))
    asyncio.run(eng.start())
    try:
        first = assemble(list(eng.events(request(a, max_tokens=6, temperature=0))))
        assemble(list(eng.events(request(b, max_tokens=6, temperature=0))))
        before = eng.call("stats")
        again = assemble(list(eng.events(request(a, max_tokens=6, temperature=0))))
        after = eng.call("stats")
    finally:
        asyncio.run(eng.aclose())
    assert before["saved_states"] == 2 and after["restores"] == before["restores"] + 1
    assert again.choices[0].text == first.choices[0].text


def test_without_a_state_budget_nothing_is_saved():
    eng = LlamaCppEngine(Settings(_env_file=None, llm_bundled_model=FAST, llm_n_ctx=N_CTX, llm_max_tokens=CAP,
                                  llm_prompt_cache=True, llm_prompt_cache_mb=0))
    asyncio.run(eng.start())
    try:
        assemble(list(eng.events(request([{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0))))
        stats = eng.call("stats")
    finally:
        asyncio.run(eng.aclose())
    assert stats["saved_states"] == 0 and stats["restores"] == 0


# --- the llama.cpp process: backend, crashes ---------------------------------------------------------------


def test_the_backend_is_portable_and_keeps_weights_out_of_extra_buffer_types(engine):
    """The build (scripts/install_deps.py) leaves AVX-512 and AMX out, and weights stay in plain CPU buffers:
    the AMX extra buffer type crashed llama_decode on this project's CPUs."""
    info = engine.describe()
    features = set(info["cpu_features"])
    assert not {f for f in features if f.startswith(("AVX512", "AMX"))}, features
    assert info["buffers"] and not any("AMX" in name or "REPACK" in name for name in info["buffers"]), info["buffers"]
    assert info["extra_buffer_types"] is False and info["worker_pid"] not in (None, os.getpid())


def test_backend_info_reads_llama_cpps_system_info_and_load_log():
    info = backend_info("CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | AMX_INT8 = 0 | OPENMP = 1 | ",
                        "load_tensors:   CPU_Mapped model buffer size =    98.00 MiB\n"
                        "load_tensors:          AMX model buffer size =    40.50 MiB\n"
                        "llama_kv_cache:        CPU KV buffer size =     6.00 MiB\n",
                        extra_buffer_types=True, load_s=0.25)
    assert info == {"cpu_features": ["SSE3", "AVX", "OPENMP"],
                    "buffers": {"CPU_Mapped model": "98.00 MiB", "AMX model": "40.50 MiB", "CPU KV": "6.00 MiB"},
                    "extra_buffer_types": True, "load_s": 0.25}


def wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def own_engine() -> LlamaCppEngine:
    """An engine of the test's own, for tests that crash its llama.cpp process."""
    eng = LlamaCppEngine(Settings(_env_file=None, llm_bundled_model=FAST, llm_n_ctx=N_CTX, llm_max_tokens=CAP))
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.aclose())


def test_the_watchdog_restarts_llama_cpp_when_it_dies_between_requests(own_engine):
    ask = request([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
    before = assemble(list(own_engine.events(ask)))
    pid = own_engine.describe()["worker_pid"]
    os.kill(pid, signal.SIGSEGV)  # as a fault in native code does
    wait_for(lambda: own_engine.describe()["crashes"] == 1 and own_engine.ready())  # no request needed
    assert own_engine.describe()["worker_pid"] not in (None, pid)
    assert assemble(list(own_engine.events(ask))).choices[0].text == before.choices[0].text


def test_a_crash_during_a_request_fails_it_with_the_signal_and_the_next_one_is_answered(own_engine):
    gen = own_engine.events(request([{"role": "user", "content": "Count to one hundred."}], max_tokens=64))
    assert isinstance(next(gen), StreamStart)
    pid = own_engine.describe()["worker_pid"]
    os.kill(pid, signal.SIGSEGV)
    with pytest.raises(EngineNotReadyError, match=f"process {pid}\\) died with SIGSEGV.*restarted") as err:
        list(gen)
    assert err.value.retryable and "Retry-After" in err.value.headers
    assert own_engine.ready() and own_engine.describe()["crashes"] == 1
    usage = list(own_engine.events(request([{"role": "user", "content": "Hi"}], max_tokens=2)))[-1]
    assert isinstance(usage, Usage) and usage.completion_tokens >= 1


def test_repeated_crashes_leave_the_engine_not_ready_with_the_reason(own_engine):
    for i in range(MAX_CRASHES_IN_A_ROW):
        os.kill(own_engine.describe()["worker_pid"], signal.SIGSEGV)
        last = i + 1 == MAX_CRASHES_IN_A_ROW
        wait_for(lambda: own_engine.describe()["crashes"] == i + 1 and (own_engine.ready() or last))
    info = own_engine.describe()
    assert not own_engine.ready() and info["status"] == "failed" and info["worker_pid"] is None
    assert f"{MAX_CRASHES_IN_A_ROW} crashes in a row: not restarted" in info["reason"]
    with pytest.raises(EngineNotReadyError, match="crashes in a row"):
        list(own_engine.events(request([{"role": "user", "content": "Hi"}], max_tokens=4)))


def test_closing_a_stream_early_cancels_the_generation_in_the_child(engine):
    gen = engine.events(request([{"role": "user", "content": "Count to one hundred."}], max_tokens=64))
    assert isinstance(next(gen), StreamStart) and isinstance(next(gen), ChatDelta)
    gen.close()  # the child stops at its next token and the pipe is drained
    usage = list(engine.events(request([{"role": "user", "content": "Hi"}], max_tokens=2)))[-1]
    assert isinstance(usage, Usage) and usage.completion_tokens <= 2


def test_a_script_read_from_stdin_can_start_the_engine():
    """llama.cpp's process is started as ``python -m services.llm.worker``: nothing of the parent's __main__
    runs again there (multiprocessing's spawn did, and a script on stdin or in a REPL could not load)."""
    import subprocess
    import sys

    script = ("import asyncio\nfrom services.llm.engine import LlamaCppEngine\n"
              "from services.llm.settings import Settings\n"
              "e = LlamaCppEngine(Settings(_env_file=None, llm_bundled_model=\"smollm2-135m\", llm_n_ctx=256, llm_max_tokens=8))\n"
              "asyncio.run(e.start())\nprint('ready', e.ready())\nasyncio.run(e.aclose())\n")
    out = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ready True" in out.stdout, out.stderr[-2000:]
