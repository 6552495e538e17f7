#!/usr/bin/env python3
"""How often does an LLM service pick the right tool? A small labelled set of voice-assistant requests.

The set (below, written for this project) has 36 requests a voice assistant hears, each labelled with the tool
that should answer it, or ``none`` for small talk and questions no tool covers, against six tools (weather,
timer, music, shopping list, lights, time). Every request is sent through the real ``openai`` client to an
OpenAI-compatible chat endpoint with all six tools and ``tool_choice="auto"``; the answer counts as right when
it calls the labelled tool (or, for ``none``, calls no tool). A second pass sends the requests that have a
tool with that tool *named* in ``tool_choice`` and checks the key argument (city, minutes, item, room, ...):
exact match after lower-casing, or for numbers the same value.

    python scripts/eval_tools.py --flan-model ~/models/flan-t5-base     # llm-flan in-process with that model
    python scripts/eval_tools.py --flan-model BASE                      # from the Hugging Face cache
    python scripts/eval_tools.py --url http://127.0.0.1:8000/v1 --model llm   # any running service (e.g. llm)
    python scripts/eval_tools.py --tiny-random                          # a random-weight T5: the chance baseline

Chance level for the choice: 1/7 if a model picked uniformly among six tools and none.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fn(name: str, description: str, props: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": required}}}


TOOLS = [
    fn("get_weather", "Get the weather forecast for a city.",
       {"city": {"type": "string", "description": "The city, e.g. Paris"}}, ["city"]),
    fn("set_timer", "Start a countdown timer.",
       {"minutes": {"type": "integer", "description": "Length of the timer in minutes"}}, ["minutes"]),
    fn("play_music", "Play music by an artist or in a genre.",
       {"query": {"type": "string", "description": "Artist, album or genre to play"}}, ["query"]),
    fn("add_to_shopping_list", "Add an item to the shopping list.",
       {"item": {"type": "string", "description": "The item to add"}}, ["item"]),
    fn("control_lights", "Turn the lights in a room on or off.",
       {"room": {"type": "string", "description": "The room"},
        "state": {"type": "string", "enum": ["on", "off"], "description": "on or off"}}, ["room", "state"]),
    fn("get_time", "Tell the current time in a city.",
       {"city": {"type": "string", "description": "The city"}}, ["city"]),
]

# (request, expected tool or "none", expected key arguments)
CASES: list[tuple[str, str, dict]] = [
    ("What's the weather like in Paris tomorrow?", "get_weather", {"city": "paris"}),
    ("Will it rain in London today?", "get_weather", {"city": "london"}),
    ("How cold is it in Oslo right now?", "get_weather", {"city": "oslo"}),
    ("Do I need an umbrella in Seattle?", "get_weather", {"city": "seattle"}),
    ("Forecast for Madrid please.", "get_weather", {"city": "madrid"}),
    ("Set a timer for ten minutes.", "set_timer", {"minutes": 10}),
    ("Start a 5 minute timer for the eggs.", "set_timer", {"minutes": 5}),
    ("Remind me in 20 minutes to check the oven.", "set_timer", {"minutes": 20}),
    ("Count down three minutes.", "set_timer", {"minutes": 3}),
    ("Timer, 45 minutes.", "set_timer", {"minutes": 45}),
    ("Play some jazz.", "play_music", {"query": "jazz"}),
    ("Put on the Beatles.", "play_music", {"query": "the beatles"}),
    ("I want to listen to Beethoven.", "play_music", {"query": "beethoven"}),
    ("Play relaxing piano music.", "play_music", {"query": "relaxing piano music"}),
    ("Add milk to my shopping list.", "add_to_shopping_list", {"item": "milk"}),
    ("We're out of bread, put it on the list.", "add_to_shopping_list", {"item": "bread"}),
    ("Don't let me forget to buy eggs.", "add_to_shopping_list", {"item": "eggs"}),
    ("Shopping list: coffee.", "add_to_shopping_list", {"item": "coffee"}),
    ("Turn off the lights in the kitchen.", "control_lights", {"room": "kitchen", "state": "off"}),
    ("Switch on the bedroom light.", "control_lights", {"room": "bedroom", "state": "on"}),
    ("It's too dark in the living room, lights on please.", "control_lights", {"room": "living room", "state": "on"}),
    ("Kill the bathroom lights.", "control_lights", {"room": "bathroom", "state": "off"}),
    ("What time is it in Tokyo?", "get_time", {"city": "tokyo"}),
    ("Is it morning in Sydney now?", "get_time", {"city": "sydney"}),
    ("What's the current time in New York?", "get_time", {"city": "new york"}),
    ("Tell me the time in Berlin.", "get_time", {"city": "berlin"}),
    ("Hello, how are you?", "none", {}),
    ("Tell me a joke.", "none", {}),
    ("What is the capital of Italy?", "none", {}),
    ("Thank you, that's all.", "none", {}),
    ("Who wrote Pride and Prejudice?", "none", {}),
    ("Translate 'good morning' into French.", "none", {}),
    ("What is two plus two?", "none", {}),
    ("Can you explain what a black hole is?", "none", {}),
    ("Good night!", "none", {}),
    ("What's your name?", "none", {}),
]


def same(value, expected) -> bool:
    if isinstance(expected, int):
        try:
            return int(value) == expected
        except (TypeError, ValueError):
            return False
    return str(value).strip().lower().rstrip(".") == expected


def evaluate(client, model: str) -> dict:
    confusion: Counter = Counter()
    right = 0
    seconds = []
    for text, expected, _ in CASES:
        t = time.perf_counter()
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], tools=TOOLS,
                                           tool_choice="auto", temperature=0, max_tokens=32)
        seconds.append(time.perf_counter() - t)
        calls = r.choices[0].message.tool_calls or []
        got = calls[0].function.name if calls else "none"
        confusion[(expected, got)] += 1
        right += got == expected
    args_right = args_total = 0
    for text, expected, args in CASES:
        if expected == "none":
            continue
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], tools=TOOLS,
                                           tool_choice={"type": "function", "function": {"name": expected}},
                                           temperature=0, max_tokens=64)
        calls = r.choices[0].message.tool_calls or []
        try:
            got_args = json.loads(calls[0].function.arguments) if calls else {}
        except ValueError:
            got_args = {}
        for key, value in args.items():
            args_total += 1
            args_right += same(got_args.get(key), value)
    tool_cases = [c for c in CASES if c[1] != "none"]
    none_cases = [c for c in CASES if c[1] == "none"]
    called_when_none = sum(n for (e, g), n in confusion.items() if e == "none" and g != "none")
    missed_tool = sum(n for (e, g), n in confusion.items() if e != "none" and g == "none")
    return {"accuracy": right / len(CASES), "right": right, "n": len(CASES),
            "tool_cases_right": sum(n for (e, g), n in confusion.items() if e == g and e != "none"),
            "tool_cases": len(tool_cases), "none_right": len(none_cases) - called_when_none,
            "none_cases": len(none_cases), "missed_tool": missed_tool,
            "args_right": args_right, "args_total": args_total,
            "p50_s": sorted(seconds)[len(seconds) // 2], "confusion": confusion}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--url", help="base URL of an OpenAI-compatible API (ending in /v1)")
    what.add_argument("--flan-model", help="run llm-flan in-process with this FLAN_T5_MODEL_SIZE (size, hub id, dir)")
    what.add_argument("--tiny-random", action="store_true", help="llm-flan with a tiny random-weight T5 (chance level)")
    p.add_argument("--model", default="llm-flan", help="model name to send with --url (default llm-flan)")
    p.add_argument("--backend", default="transformers", choices=["transformers", "ctranslate2"])
    args = p.parse_args()

    import httpx
    import openai

    with ExitStack() as stack:
        if args.url:
            base, label = args.url, f"{args.model} at {args.url}"
        else:
            from services.common.testing import serve_in_thread
            from services.llm_flan.app import create_app
            from services.llm_flan.settings import Settings

            model = args.flan_model
            if args.tiny_random:
                sys.path.insert(0, str(ROOT))
                from tests.llm_flan.tiny_t5 import build_tiny_t5

                model = str(build_tiny_t5(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "tiny"))
            settings = Settings(flan_t5_model_size=model, flan_t5_backend=args.backend, flan_t5_allow_download=False,
                                flan_t5_max_input_tokens=2048 if args.tiny_random else 512)
            url = stack.enter_context(serve_in_thread(create_app(settings)))
            for _ in range(1200):
                r = httpx.get(f"{url}/health/ready")
                if r.status_code == 200:
                    break
                if "failed to start" in r.text:
                    raise SystemExit(f"llm-flan did not start: {r.json().get('reasons')}")
                time.sleep(0.25)
            base, label = f"{url}/v1", f"llm-flan ({'tiny random T5' if args.tiny_random else model}, {args.backend})"
        client = openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=600)
        t0 = time.perf_counter()
        res = evaluate(client, args.model if args.url else "llm-flan")
        took = time.perf_counter() - t0

    print(f"# Tool choice on {res['n']} labelled requests: {label}\n")
    print("| measure | result |\n|---|---|")
    print(f"| right tool or none (tool_choice=auto) | {res['right']}/{res['n']} = {res['accuracy']:.0%} |")
    print(f"| requests needing a tool: right tool | {res['tool_cases_right']}/{res['tool_cases']} |")
    print(f"| requests needing a tool: answered without one | {res['missed_tool']}/{res['tool_cases']} |")
    print(f"| small talk / no tool fits: no tool called | {res['none_right']}/{res['none_cases']} |")
    print(f"| key arguments right (tool named in tool_choice) | {res['args_right']}/{res['args_total']} |")
    print(f"| p50 latency of an auto request | {res['p50_s'] * 1000:.0f} ms |")
    print("\nconfusion (expected -> chosen: count):")
    for (expected, got), n in sorted(res["confusion"].items()):
        if expected != got:
            print(f"  {expected} -> {got}: {n}")
    print(f"\nchance level for the choice: {1 / 7:.0%}; runtime {took:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
