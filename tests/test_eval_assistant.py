"""scripts/eval_assistant.py: the labelled request set is well formed, and scoring counts what it says."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import eval_assistant  # noqa: E402

CATEGORIES = {"fact", "arithmetic", "conversion", "time", "message", "web search", "cannot do", "small talk",
              "follow-up"}
TOOLS = {None, "Calculator", "GetCurrentTime", "SearchWeb", "SendDiscordMessage"}


def test_the_set_covers_every_category_with_valid_patterns_and_tools():
    rows = eval_assistant.load(eval_assistant.DATA, None)
    assert {r["category"] for r in rows} == CATEGORIES and len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["turns"] and r["expect"] and r.get("tool") in TOOLS, r["id"]
        for pattern in r["expect"]:
            re.compile(pattern)
    assert all(len(r["turns"]) > 1 for r in rows if r["category"] == "follow-up")


def test_a_repeated_sentence_is_found_and_a_varied_answer_is_not():
    assert eval_assistant.repeated_sentence("Web search is not configured. Web search is not configured.") \
        == "Web search is not configured."
    assert eval_assistant.repeated_sentence("Paris is the capital. It is in France.") is None


def test_score_needs_every_pattern_and_reports_tools_and_repeats():
    row = {"id": "x", "category": "arithmetic", "turns": ["What is 12 times 7?"], "expect": [r"\b84\b"],
           "tool": "Calculator"}
    good = eval_assistant.score(row, {"response": "12 times 7 is 84.", "timings": {"total": 900.0},
                                      "tool_calls": [{"name": "Calculator"}], "llm_engine": "llm"})
    assert good["correct"] and good["called"] == ["Calculator"] and good["ms"] == 900.0 and not good["repeat"]
    bad = eval_assistant.score(row, {"response": "I can't look that up. I can't look that up.", "tool_calls": []})
    assert not bad["correct"] and bad["repeat"] and bad["words"] == 10


def test_tool_syntax_read_out_or_a_tool_where_none_is_needed_is_not_correct():
    row = {"id": "x", "category": "cannot do", "turns": ["Set a timer."], "expect": ["can't"], "tool": None}
    leaked = eval_assistant.score(row, {"response": 'functions.SendDiscordMessage:\n{"message": "hi"} I can\'t.',
                                        "tool_calls": [{"name": "SendDiscordMessage"}]})
    assert not leaked["correct"]
    assert set(leaked["faults"]) == {"tool syntax read out", "tool called where none is needed"}
    honest = eval_assistant.score(row, {"response": "Sorry, I can't set timers.", "tool_calls": []})
    assert honest["correct"] and honest["faults"] == []
