"""llm-flan served for real (uvicorn on a loopback port) with a tiny random-weight T5 loaded through the same
loading code as FLAN-T5, on both backends, driven by the real `openai` client, LangChain's ChatOpenAI and raw
HTTP for what the clients hide (headers, error bodies)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from services.common.testing import serve_in_thread
from services.llm_flan.app import create_app
from services.llm_flan.settings import Settings
from tests.llm_flan.tiny_t5 import build_tiny_t5

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "days": {"type": "integer", "description": "Forecast days"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "detailed": {"type": "boolean"},
            "note": {"type": "string", "description": "optional, left out"}},
            "required": ["city", "days", "unit", "detailed"]}}},
    {"type": "function", "function": {
        "name": "set_timer", "description": "Start a countdown timer.",
        "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}}, "required": ["minutes"]}}},
]
USER = [{"role": "user", "content": "hello there"}]


def wait_ready(url: str, timeout_s: float = 120) -> httpx.Response:
    end = time.monotonic() + timeout_s
    while True:
        r = httpx.get(f"{url}/health/ready")
        if r.status_code == 200 or time.monotonic() > end or "failed to start" in r.text:
            return r
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


def settings_for(tiny: Path, backend: str, tmp: Path, **kw) -> Settings:
    return Settings(_env_file=None, flan_t5_model_size=str(tiny), flan_t5_backend=backend,
                    flan_t5_ct2_dir=tmp / f"ct2-{backend}", flan_t5_max_length=64, flan_t5_max_input_tokens=1024, **kw)


@pytest.fixture(scope="module", params=["transformers", "ctranslate2"])
def url(request, tiny: Path, tmp_path_factory: pytest.TempPathFactory):
    app = create_app(settings_for(tiny, request.param, tmp_path_factory.mktemp("ct2")))
    with serve_in_thread(app) as base:
        assert wait_ready(base).status_code == 200
        yield base


@pytest.fixture()
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


def ask(client: openai.OpenAI, **kw):
    kw.setdefault("model", "llm-flan")
    kw.setdefault("messages", USER)
    return client.chat.completions.create(**kw)


# --- the OpenAI surface -----------------------------------------------------------------------------------


def test_models_are_listed(client: openai.OpenAI, tiny: Path):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == str(tiny) and "llm-flan" in ids
    assert client.models.retrieve("llm-flan").id == "llm-flan"


def test_completion_and_stream_agree_at_temperature_zero(client: openai.OpenAI):
    full = ask(client, max_tokens=20, temperature=0)
    assert full.object == "chat.completion" and full.choices[0].message.role == "assistant"
    text = full.choices[0].message.content
    assert text and full.usage.prompt_tokens == len("hello there".encode()) + 1
    assert full.usage.completion_tokens >= len(text) and full.usage.total_tokens == \
        full.usage.prompt_tokens + full.usage.completion_tokens
    chunks = list(ask(client, max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3, "tokens arrive as they are generated, not in one piece"
    assert "".join(pieces) == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_temperature_zero_is_deterministic_and_seed_reproduces_sampling(client: openai.OpenAI, url: str):
    a = ask(client, max_tokens=24, temperature=0).choices[0].message.content
    assert all(ask(client, max_tokens=24, temperature=0).choices[0].message.content == a for _ in range(2))
    assert ask(client, max_tokens=24, temperature=0, seed=3).choices[0].message.content == a
    backend = httpx.get(f"{url}/health/ready").json()["components"]["flan-t5"]["backend"]
    if backend == "ctranslate2":  # it cannot seed its worker threads: refused, not ignored
        with pytest.raises(openai.UnprocessableEntityError, match="seed is not supported by the ctranslate2"):
            ask(client, max_tokens=24, temperature=1.0, seed=7)
        return
    s1 = [c.message.content for c in ask(client, max_tokens=24, temperature=1.0, top_p=1.0, seed=7, n=2).choices]
    s2 = [c.message.content for c in ask(client, max_tokens=24, temperature=1.0, top_p=1.0, seed=7, n=2).choices]
    assert s1 == s2
    others = {ask(client, max_tokens=24, temperature=1.0, top_p=1.0, seed=s).choices[0].message.content
              for s in (1, 2, 3)}
    assert len(others | {s1[0]}) > 1, "sampling with other seeds gives other answers"


def test_max_tokens_caps_the_answer(client: openai.OpenAI):
    r = ask(client, max_tokens=5, temperature=0)
    assert r.usage.completion_tokens <= 5
    longer = ask(client, max_tokens=30, temperature=0).choices[0].message.content
    if len(longer) > 5:  # the model did not stop by itself within 5 tokens
        assert r.choices[0].finish_reason == "length" and longer.startswith(r.choices[0].message.content)
    r = ask(client, max_completion_tokens=3, temperature=0)
    assert r.usage.completion_tokens <= 3


def test_stop_sequences_end_the_answer_before_them(client: openai.OpenAI):
    text = ask(client, max_tokens=30, temperature=0).choices[0].message.content
    assert len(text) >= 6
    stop = text[3:5]
    cut = text[: text.find(stop)]
    r = ask(client, max_tokens=30, temperature=0, stop=[stop, "zzzz"])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       ask(client, max_tokens=30, temperature=0, stop=stop, stream=True) if c.choices)
    assert streamed == cut


def test_n_gives_that_many_choices(client: openai.OpenAI):
    r = ask(client, max_tokens=8, temperature=0.9, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2] and all(c.message.content is not None for c in r.choices)
    chunks = list(ask(client, max_tokens=8, temperature=0.9, n=2, stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}


def test_an_over_long_history_keeps_the_newest_message(url: str):
    history = []
    for i in range(30):
        history += [{"role": "user", "content": f"old question {i} " + "q" * 60},
                    {"role": "assistant", "content": f"old answer {i} " + "a" * 60}]
    body = {"model": "llm-flan", "messages": [*history, {"role": "user", "content": "the newest question"}],
            "max_tokens": 4, "temperature": 0}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    dropped = int(r.headers["x-context-truncated-messages"])
    assert 0 < dropped < 60
    body["messages"] = [*history, {"role": "user", "content": "n" * 1100}]
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 422 and "input limit of 1024 tokens" in r.json()["error"]["message"]


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "llm-flan", "messages": []}, 422, "messages"),
    ({"model": "llm-flan", "messages": [{"role": "robot", "content": "hi"}]}, 422, "role"),
    ({"model": "llm-flan", "messages": USER, "max_tokens": -1}, 422, "max_tokens"),
    ({"model": "llm-flan", "messages": USER, "max_tokens": 65}, 422, "over this model's limit of 64"),
    ({"model": "llm-flan", "messages": USER, "temperature": 3}, 422, "temperature"),
    ({"model": "llm-flan", "messages": USER, "presence_penalty": 0.5}, 422, "not supported"),
    ({"model": "llm-flan", "messages": USER, "logit_bias": {"5": 1}}, 422, "logit_bias"),
    ({"model": "llm-flan", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 422, "at most 4"),
    ({"model": "llm-flan", "messages": [{"role": "tool", "content": "x"}]}, 422, "tool_call_id"),
    ({"model": "llm-flan", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     422, "messages"),
    ({"model": "llm-flan", "messages": USER, "tool_choice": "required"}, 422, "tool_choice needs tools"),
    ({"model": "gpt-4o", "messages": USER}, 404, "not served here"),
])
def test_bad_requests_get_openai_shaped_4xx(url: str, body: dict, status: int, fragment: str):
    r = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"] == "invalid_request_error" and err["code"]


def test_the_openai_client_raises_on_bad_requests(client: openai.OpenAI):
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        ask(client, max_tokens=-3)
    with pytest.raises(openai.NotFoundError):
        ask(client, model="nope")


# --- tools --------------------------------------------------------------------------------------------------


def test_a_named_tool_choice_returns_a_typed_tool_call(client: openai.OpenAI):
    r = ask(client, messages=[{"role": "user", "content": "weather in paris for three days"}], tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "days", "unit", "detailed"}
    assert isinstance(args["city"], str) and isinstance(args["days"], int)
    assert args["unit"] in ("celsius", "fahrenheit") and isinstance(args["detailed"], bool)


def test_required_always_calls_one_of_the_tools_and_auto_may_answer(client: openai.OpenAI):
    r = ask(client, messages=[{"role": "user", "content": "set a timer"}], tools=TOOLS, tool_choice="required")
    assert r.choices[0].message.tool_calls[0].function.name in {"get_weather", "set_timer"}
    auto = ask(client, messages=[{"role": "user", "content": "set a timer"}], tools=TOOLS, max_tokens=8)
    msg = auto.choices[0].message
    assert (msg.tool_calls and auto.choices[0].finish_reason == "tool_calls") or \
        (msg.content is not None and auto.choices[0].finish_reason in ("stop", "length"))


def test_after_a_tool_result_auto_answers_in_text(client: openai.OpenAI):
    messages = [{"role": "user", "content": "weather in paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                      "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}]
    r = ask(client, messages=messages, tools=TOOLS, max_tokens=8, temperature=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content is not None


def test_a_streamed_tool_call_arrives_whole(client: openai.OpenAI):
    chunks = list(ask(client, messages=USER, tools=TOOLS, stream=True,
                      tool_choice={"type": "function", "function": {"name": "set_timer"}}))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "set_timer"
    assert isinstance(json.loads(calls[0].function.arguments)["minutes"], int)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# --- LangChain as a client ---------------------------------------------------------------------------------


def test_langchain_chat_openai_invokes_streams_and_binds_tools(url: str):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{url}/v1", api_key="x", model="llm-flan", temperature=0, max_tokens=12,
                     max_retries=0)
    answer = llm.invoke("hello there")
    assert isinstance(answer.content, str) and answer.content
    pieces = [chunk.content for chunk in llm.stream("hello there") if chunk.content]
    assert len(pieces) > 1 and "".join(pieces) == answer.content

    @tool
    def set_timer(minutes: int) -> str:
        """Start a countdown timer."""
        return f"timer set for {minutes} minutes"

    bound = llm.bind_tools([set_timer], tool_choice="set_timer")
    msg = bound.invoke("set a timer for five minutes")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "set_timer"
    assert isinstance(msg.tool_calls[0]["args"]["minutes"], int)


# --- batching, overload, readiness, metrics ------------------------------------------------------------------


def batch_stats(url: str) -> tuple[float, float]:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    get = lambda name: sum(float(l.split()[-1]) for l in lines if l.startswith(name + "{"))  # noqa: E731
    return get("llm_batch_size_count"), get("llm_batch_size_sum")


def test_concurrent_requests_share_generate_calls_and_answer_as_alone(url: str, client: openai.OpenAI):
    prompts = [f"request number {i}" for i in range(6)]
    alone = [ask(client, messages=[{"role": "user", "content": p}], max_tokens=16, temperature=0)
             .choices[0].message.content for p in prompts]
    count0, rows0 = batch_stats(url)
    with cf.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: ask(client, messages=[{"role": "user", "content": p}], max_tokens=16,
                                                temperature=0).choices[0].message.content, prompts))
    count1, rows1 = batch_stats(url)
    assert together == alone
    assert rows1 - rows0 == len(prompts) and count1 - count0 < len(prompts), "some requests shared a batch"


def test_batching_off_runs_one_row_per_call_and_overload_is_503(tiny: Path, tmp_path: Path):
    app = create_app(settings_for(tiny, "transformers", tmp_path, flan_t5_max_batch_size=1, max_queue=0))
    with serve_in_thread(app) as base:
        assert wait_ready(base).status_code == 200
        long_body = {"model": "llm-flan", "messages": USER, "max_tokens": 64, "temperature": 0}
        count0, rows0 = batch_stats(base)  # the registry is shared with the other apps of this process
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: results.append(
            httpx.post(f"{base}/v1/chat/completions", json=long_body, timeout=60))) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(r.status_code for r in results)
        assert 200 in codes and 503 in codes, codes
        busy = next(r for r in results if r.status_code == 503)
        assert busy.json()["error"]["code"] == "busy" and int(busy.headers["retry-after"]) >= 1
        count, rows = batch_stats(base)
        assert count - count0 == rows - rows0 == codes.count(200)  # batching off: one row per generate call


def test_an_unavailable_model_keeps_the_service_not_ready_with_the_reason(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    app = create_app(Settings(_env_file=None, flan_t5_model_size="BASE", flan_t5_allow_download=False))
    with serve_in_thread(app) as base:
        r = wait_ready(base, timeout_s=60)
        assert r.status_code == 503
        assert "google/flan-t5-base is not in the Hugging Face cache" in " ".join(r.json()["reasons"])
        chat = httpx.post(f"{base}/v1/chat/completions", json={"model": "llm-flan", "messages": USER})
        assert chat.status_code == 503 and chat.json()["error"]["code"] == "engine_not_ready"
        assert chat.json()["error"]["retryable"] is True and "retry-after" in chat.headers


def test_token_metrics_count_prompt_and_completion(url: str, client: openai.OpenAI):
    def tokens(kind: str) -> float:
        return sum(float(l.split()[-1]) for l in httpx.get(f"{url}/metrics").text.splitlines()
                   if l.startswith("llm_tokens_total{") and f'kind="{kind}"' in l)

    before = tokens("completion"), tokens("prompt")
    r = ask(client, max_tokens=6, temperature=0)
    assert tokens("completion") - before[0] == r.usage.completion_tokens
    assert tokens("prompt") - before[1] == r.usage.prompt_tokens
