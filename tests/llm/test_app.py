"""llm service end to end: the real SmolLM2-135M-Instruct GGUF on llama.cpp behind real HTTP, driven by the
real `openai` client, LangChain's `ChatOpenAI` and httpx (headers, error bodies, overload). Small
``max_tokens`` everywhere: the whole module runs in well under a minute on two cores."""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from services.common.testing import serve_in_thread, wait_ready
from services.llm.app import create_app
from services.llm.settings import Settings

N_CTX = 512
FAST = "smollm2-135m"  # the tests drive the engine, not the model: the fastest bundled one
CAP = 64
SMALL_CTX = 256
ASK = [{"role": "user", "content": "Write a short poem about the sea."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {"name": "search", "description": "Search the web",
                 "parameters": {"type": "object", "properties": {"query": {"type": "string", "maxLength": 40}},
                                "required": ["query"]}},
}



@pytest.fixture(scope="module")
def url():
    app = create_app(Settings(_env_file=None, llm_bundled_model=FAST, llm_n_ctx=N_CTX, llm_max_tokens=CAP))
    with serve_in_thread(app) as base:
        wait_ready(base, timeout_s=20)
        yield base


@pytest.fixture(scope="module")
def small_url():
    """A 256-token context, so that over-long histories stay cheap to evaluate."""
    app = create_app(Settings(_env_file=None, llm_bundled_model=FAST, llm_n_ctx=SMALL_CTX, llm_max_tokens=32))
    with serve_in_thread(app) as base:
        wait_ready(base, timeout_s=20)
        yield base


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def chat(client: openai.OpenAI, **kw):
    kw.setdefault("messages", ASK)
    return client.chat.completions.create(model="llm", **kw)


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


# --- the openai client --------------------------------------------------------------------------------------


def test_models_list_names_the_model_and_the_alias(client):
    assert [m.id for m in client.models.list()] == ["SmolLM2-135M-Instruct", "llm"]


def test_non_streaming_completion(client):
    r = chat(client, temperature=0, max_tokens=12)
    choice = r.choices[0]
    assert r.model == "SmolLM2-135M-Instruct" and r.object == "chat.completion"
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_arrives_in_pieces_that_add_up_to_the_non_streamed_answer(client):
    whole = chat(client, temperature=0, seed=7, max_tokens=16)
    chunks = list(chat(client, temperature=0, seed=7, max_tokens=16, stream=True,
                       stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 4
    assert "".join(pieces) == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == whole.usage.completion_tokens
    assert usage.usage.prompt_tokens == whole.usage.prompt_tokens


def test_temperature_zero_is_deterministic(client):
    a, b = (chat(client, temperature=0, max_tokens=12).choices[0].message.content for _ in range(2))
    assert a == b


def test_max_tokens_caps_the_answer(client):
    r = chat(client, temperature=0, max_tokens=5)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


def test_stop_sequence_cuts_the_text(client):
    full = chat(client, temperature=0, max_tokens=16).choices[0].message.content
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    cut = chat(client, temperature=0, max_tokens=16, stop=[stop])
    text = cut.choices[0].message.content
    assert stop not in text and text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       chat(client, temperature=0, max_tokens=16, stop=[stop], stream=True) if c.choices)
    assert streamed == text


def test_n_gives_that_many_choices(client):
    r = chat(client, n=2, temperature=0.8, seed=3, max_tokens=8)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert r.usage.completion_tokens <= 16


def test_seed_makes_sampling_reproducible(client):
    a, b = (chat(client, temperature=0.8, seed=1234, max_tokens=16).choices[0].message.content for _ in range(2))
    assert a == b


def test_named_tool_choice_returns_schema_valid_arguments(client):
    r = chat(client, messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=[WEATHER, SEARCH],
             tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0, max_tokens=64)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")
    assert isinstance(args["city"], str) and len(args["city"]) <= 24


def test_required_tool_choice_calls_one_of_the_tools(client):
    r = chat(client, messages=[{"role": "user", "content": "Find pictures of cats."}], tools=[WEATHER, SEARCH],
             tool_choice="required", temperature=0, max_tokens=64)
    (call,) = r.choices[0].message.tool_calls
    schema = {"get_weather": {"city", "unit"}, "search": {"query"}}[call.function.name]
    assert set(json.loads(call.function.arguments)) == schema
    assert r.choices[0].finish_reason == "tool_calls"


def test_auto_tool_choice_answers_with_text_or_a_valid_call(client):
    r = chat(client, messages=[{"role": "user", "content": "What is the weather in Oslo?"}], tools=[WEATHER],
             temperature=0, max_tokens=48)
    choice = r.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        assert set(json.loads(choice.message.tool_calls[0].function.arguments)) == {"city", "unit"}
    else:
        assert choice.message.content and not choice.message.content.startswith("message:")


def allowed(*names: str, mode: str = "auto") -> dict:
    return {"type": "allowed_tools",
            "allowed_tools": {"mode": mode, "tools": [{"type": "function", "function": {"name": n}} for n in names]}}


def test_allowed_tools_narrow_what_may_be_called_but_the_prompt_shows_every_tool(client):
    """OpenAI's allowed_tools: the prompt (and so its KV cache) is the same whatever is allowed; only the
    allowed tools can be called, and with none allowed the model answers."""
    ask = [{"role": "user", "content": "Find pictures of cats."}]
    only_weather = chat(client, messages=ask, tools=[WEATHER, SEARCH], tool_choice=allowed("get_weather", mode="required"),
                        temperature=1.5, seed=3, max_tokens=64)
    (call,) = only_weather.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city", "unit"}
    nothing = chat(client, messages=ask, tools=[WEATHER, SEARCH], tool_choice=allowed(), temperature=1.5, seed=3,
                   max_tokens=24)
    assert not nothing.choices[0].message.tool_calls and nothing.choices[0].message.content
    assert nothing.usage.prompt_tokens == only_weather.usage.prompt_tokens


@pytest.mark.parametrize("choice, says", [
    (allowed("no_such_tool"), "not among the tools"),
    (allowed(mode="required"), "needs at least one tool"),
])
def test_bad_allowed_tools_are_a_422(client, choice, says):
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        chat(client, messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER], tool_choice=choice, max_tokens=4)
    assert says in str(exc.value)


def test_streamed_tool_call_comes_as_one_delta(client):
    chunks = list(chat(client, messages=[{"role": "user", "content": "Weather in Rome?"}], tools=[WEATHER],
                       tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0,
                       max_tokens=64, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert set(json.loads(calls[0].function.arguments)) == {"city", "unit"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_tool_result_conversation_is_answered(client):
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    r = chat(client, messages=messages, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=16)
    assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")


def test_openai_client_raises_with_the_message(client):
    with pytest.raises(openai.UnprocessableEntityError, match="LLM_MAX_TOKENS"):
        chat(client, max_tokens=CAP + 1)
    with pytest.raises(openai.NotFoundError, match="gpt-4o"):
        client.chat.completions.create(model="gpt-4o", messages=ASK)
    with pytest.raises(openai.UnprocessableEntityError, match="stop"):
        chat(client, tools=[WEATHER], stop=["x"])


# --- error shape ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"model": "llm", "messages": []}, 422, "messages"),
        ({"model": "llm", "messages": [{"role": "robot", "content": "hi"}]}, 422, "role"),
        ({"model": "llm", "messages": ASK, "max_tokens": -1}, 422, "max_tokens"),
        ({"model": "llm", "messages": ASK, "max_tokens": CAP + 1}, 422, f"at most {CAP}"),
        ({"model": "llm", "messages": ASK, "frobnicate": True}, 422, "frobnicate"),
        ({"model": "nope", "messages": ASK}, 404, "nope"),
        ({"model": "llm", "messages": [{"role": "user", "content": "hi", "name": "ann"}]}, 422, "name"),
        ({"model": "llm", "messages": [{"role": "tool", "tool_call_id": "x", "content": "1"}]}, 422, "tool call"),
    ],
)
def test_bad_requests_get_openai_error_bodies(url, body, status, needle):
    r = post(url, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    assert err["type"] == "invalid_request_error" and needle in err["message"]


# --- context window -----------------------------------------------------------------------------------------


def long_history(turns: int) -> list[dict]:
    filler = "The committee reviewed the quarterly figures again and found nothing new to report."
    history = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        history += [{"role": "user", "content": f"Turn {i}. {filler}"}, {"role": "assistant", "content": filler}]
    return history


def test_over_long_history_drops_old_turns_and_says_how_many(small_url):
    messages = long_history(10) + [{"role": "user", "content": "Say the word ZANZIBARIAN."}]
    r = post(small_url, {"model": "llm", "messages": messages, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    dropped = int(r.headers["x-context-truncated-messages"])
    assert 0 < dropped < len(messages) - 2
    assert r.json()["usage"]["prompt_tokens"] + 8 <= SMALL_CTX
    with httpx.stream("POST", f"{small_url}/v1/chat/completions", timeout=60,
                      json={"model": "llm", "messages": messages, "max_tokens": 8, "stream": True}) as s:
        assert s.status_code == 200 and s.headers["x-context-truncated-messages"] == str(dropped)
        s.read()


def test_short_history_has_no_truncation_header(small_url):
    r = post(small_url, {"model": "llm", "messages": ASK, "max_tokens": 2})
    assert r.status_code == 200 and "x-context-truncated-messages" not in r.headers


def test_a_newest_message_beyond_the_context_is_refused_with_the_sizes(small_url):
    huge = "word " * 300
    r = post(small_url, {"model": "llm", "messages": [{"role": "user", "content": huge}], "max_tokens": 8})
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert re.search(r"take \d+ prompt tokens", message) and f"> {SMALL_CTX}" in message
    streamed = post(small_url, {"model": "llm", "messages": [{"role": "user", "content": huge}], "stream": True})
    assert streamed.status_code == 422  # refused before the stream starts: a status code, not an error event
    assert "plus max_tokens 32 " in streamed.json()["error"]["message"]  # the default, LLM_MAX_TOKENS


# --- LangChain ------------------------------------------------------------------------------------------------


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="City name", max_length=24)
    unit: str = Field(description="celsius or fahrenheit", pattern="^(celsius|fahrenheit)$")


def test_langchain_invoke_and_stream(url):
    llm = ChatOpenAI(base_url=f"{url}/v1", api_key="x", model="llm", temperature=0, max_tokens=16)
    answer = llm.invoke("Name a colour.")
    assert isinstance(answer, AIMessage) and answer.content
    chunks = [c.content for c in llm.stream("Name a colour.") if c.content]
    assert len(chunks) >= 2 and "".join(chunks) == answer.content


def test_langchain_bind_tools_with_a_named_tool(url):
    llm = ChatOpenAI(base_url=f"{url}/v1", api_key="x", model="llm", temperature=0, max_tokens=64)
    msg = llm.bind_tools([GetWeather], tool_choice="GetWeather").invoke("What's the weather in Berlin?")
    assert isinstance(msg, AIMessage) and not msg.invalid_tool_calls
    (call,) = msg.tool_calls
    assert call["name"] == "GetWeather" and set(call["args"]) == {"city", "unit"}
    GetWeather(**call["args"])  # the arguments satisfy the schema


# --- load ---------------------------------------------------------------------------------------------------


def test_simultaneous_requests_queue_and_all_succeed(url):
    def one(i: int) -> int:
        return post(url, {"model": "llm", "messages": [{"role": "user", "content": f"Say {i}."}],
                          "max_tokens": 4}).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(4))) == [200] * 4


def test_a_full_queue_answers_503_with_retry_after():
    app = create_app(Settings(_env_file=None, llm_bundled_model=FAST, llm_n_ctx=N_CTX, llm_max_tokens=400, max_queue=0))
    long = {"model": "llm", "max_tokens": 400, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "Write a long essay about the history of Rome."}]}
    with serve_in_thread(app) as base:
        wait_ready(base, timeout_s=20)
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=long, timeout=60) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)  # generating now, holding the only slot until the stream ends
            second = post(base, {"model": "llm", "messages": ASK, "max_tokens": 2})
        assert second.status_code == 503
        assert int(second.headers["retry-after"]) >= 1
        assert second.json()["error"]["code"] == "busy"
        # the first client went away: its generation stops at the next token and the slot comes back
        for _ in range(100):
            third = post(base, {"model": "llm", "messages": ASK, "max_tokens": 2})
            if third.status_code != 503:
                break
            threading.Event().wait(0.1)
        assert third.status_code == 200, third.text


def test_metrics_count_tokens_of_this_engine(url, client):
    chat(client, max_tokens=3)
    text = httpx.get(f"{url}/metrics").text
    completion = re.search(r'^llm_tokens_total\{engine="llama-cpp",kind="completion",service="llm"\} (\S+)$', text, re.M)
    prompt = re.search(r'^llm_tokens_total\{engine="llama-cpp",kind="prompt",service="llm"\} (\S+)$', text, re.M)
    assert completion and float(completion[1]) >= 3 and prompt and float(prompt[1]) > 0


def test_health_ready_describes_the_model(url):
    body = httpx.get(f"{url}/health/ready").json()
    info = body["components"]["llama-cpp"]
    assert body["status"] == "ready" and info["model"] == "SmolLM2-135M-Instruct" and info["n_ctx"] == N_CTX


def test_the_service_survives_a_crash_of_llama_cpp_and_says_so_on_health_ready(tmp_path):
    """The service as it runs in the fleet (``python -m services.llm``, its own process): llama.cpp dying with
    SIGSEGV leaves the service up; /health/ready names the crash count and a new llama.cpp process, and the
    openai client is answered again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from services.common.testing import free_port

    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "LLM_N_CTX": str(N_CTX), "LLM_MAX_TOKENS": str(CAP)}
    proc = subprocess.Popen([sys.executable, "-m", "services.llm"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "llm.log", "wb"), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout_s=60)
        info = httpx.get(f"{base}/health/ready").json()["components"]["llama-cpp"]
        pid = info["worker_pid"]
        assert info["crashes"] == 0 and pid != proc.pid
        os.kill(pid, signal.SIGSEGV)
        deadline = time.monotonic() + 30
        while True:
            r = httpx.get(f"{base}/health/ready")
            info = r.json()["components"]["llama-cpp"]
            if r.status_code == 200 and info["crashes"] == 1:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert info["worker_pid"] not in (None, pid) and proc.poll() is None
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
        assert chat(client, max_tokens=3).choices[0].message.content
        # Ctrl-C reaches the whole process group: the service stops, and its llama.cpp process with it (no
        # "crash", no restart)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) is not None
        log = (tmp_path / "llm.log").read_text()
        assert f"llama.cpp (process {pid}) died with SIGSEGV" in log and "llama.cpp CPU backend:" in log
        assert log.count("died with") == 1, log
        with pytest.raises(ProcessLookupError):
            os.kill(info["worker_pid"], 0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
