"""llm-flan pieces without a served app: settings, prompt building, tool-argument coercion, the two backends on
a tiny random T5 (same loading code as FLAN-T5), and the CTranslate2 conversion."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import InvalidRequestError
from services.common.openai_chat import ChatMessage
from services.common.settings import BaseServiceSettings
from services.common.testing import read_env_file
from services.llm_flan.backends import CTranslate2Backend, Sampling, TransformersBackend
from services.llm_flan.prompting import CLOSING, build_prompt
from services.llm_flan.settings import Settings
from services.llm_flan.tools import coerce
from tests.llm_flan.tiny_t5 import build_tiny_t5

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


# --- settings --------------------------------------------------------------------------------------------


def test_settings_defaults_follow_the_plan():
    s = Settings(_env_file=None)
    assert s.port == 8110 and Settings.service_name == "llm-flan"
    assert s.model_id() == "google/flan-t5-base"
    assert (s.flan_t5_max_length, s.flan_t5_temperature, s.flan_t5_top_p) == (512, 0.7, 0.9)
    for size, hub_id in (("LARGE", "google/flan-t5-large"), ("xl", "google/flan-t5-xl"), ("base", "google/flan-t5-base"),
                         ("google/flan-t5-small", "google/flan-t5-small"), ("/models/my-t5", "/models/my-t5")):
        assert Settings(_env_file=None, flan_t5_model_size=size).model_id() == hub_id


def test_env_service_holds_exactly_the_flan_fields_at_their_defaults():
    env_file = REPO / "services" / "llm_flan" / ".env.service"
    own = set(Settings.model_fields) - set(BaseServiceSettings.model_fields)
    assert set(read_env_file(env_file)) == {name.upper() for name in own}
    assert Settings(_env_file=env_file).model_dump() == Settings(_env_file=None).model_dump()


# --- prompts ---------------------------------------------------------------------------------------------


def msgs(*pairs: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage(role=r, content=c) for r, c in pairs]


def test_a_single_question_is_sent_as_the_instruction():
    p = build_prompt(msgs(("system", "Be brief."), ("user", "What is the capital of France?")), len, 512)
    assert p.text == "Be brief.\n\nWhat is the capital of France?" and p.dropped_messages == 0


def test_a_conversation_becomes_a_transcript_with_tool_turns():
    messages = [
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage(role="assistant", content=None, tool_calls=[
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]),
        ChatMessage(role="tool", tool_call_id="call_1", content="18 C, sunny"),
    ]
    p = build_prompt(messages, len, 512)
    assert p.text.splitlines()[:3] == ["User: Weather in Paris?", 'Assistant called get_weather({"city": "Paris"})',
                                       "Tool get_weather returned: 18 C, sunny"]
    assert p.text.endswith("using the tool results above.")


def test_history_is_cut_from_the_oldest_turn_and_the_newest_is_kept():
    turns = [("system", "SYS")]
    for i in range(10):
        turns += [("user", f"question {i} " + "x" * 40), ("assistant", f"answer {i} " + "y" * 40)]
    turns.append(("user", "NEWEST QUESTION"))
    p = build_prompt(msgs(*turns), len, 300)
    assert len(p.text) <= 300
    assert p.text.startswith("SYS\n\n") and "User: NEWEST QUESTION" in p.text and p.text.endswith(CLOSING)
    assert "question 0 " not in p.text and "answer 9 " in p.text  # oldest out, newest history in
    kept = p.text.count("User: ") + p.text.count("Assistant: ")
    assert p.dropped_messages == 20 - (kept - 1) and p.dropped_messages > 0


def test_a_newest_message_that_cannot_fit_is_refused_not_cut():
    with pytest.raises(InvalidRequestError, match="over the model's input limit of 50 tokens"):
        build_prompt(msgs(("user", "z" * 80)), len, 50)
    with pytest.raises(InvalidRequestError, match="without any earlier turn"):
        build_prompt(msgs(("user", "hi"), ("assistant", "hello"), ("user", "z" * 80)), len, 60)


def test_tool_arguments_are_coerced_to_the_schema_type():
    assert coerce(" 42 minutes", {"type": "integer"}) == 42
    assert coerce("seven", {"type": "integer"}) == 7
    assert coerce("about 2.5", {"type": "number"}) == 2.5
    assert coerce("no digits", {"type": "integer", "default": 5}) == 5
    assert coerce('"Paris"', {"type": "string"}) == "Paris"
    assert coerce("milk, bread and eggs", {"type": "array", "items": {"type": "string"}}) == ["milk", "bread", "eggs"]
    assert coerce("[1, 2]", {"type": "array", "items": {"type": "integer"}}) == [1, 2]
    assert coerce("not json", {"type": "object"}) == {}


# --- backends on a real (tiny, random) T5 ---------------------------------------------------------------------


def run_greedy(backend, prompts: list[str], max_new: int = 12) -> list[list[int]]:
    out: dict[int, list[int]] = {i: [] for i in range(len(prompts))}

    def on_token(row: int, token: int) -> bool:
        out[row].append(token)
        return token == backend.eos_id or len(out[row]) >= max_new - row  # rows stop at different steps

    backend.generate([backend.encode(p) for p in prompts], Sampling(0.0, 1.0), max_new, on_token)
    return [out[i] for i in range(len(prompts))]


def test_transformers_and_ctranslate2_agree_on_the_same_weights(tiny: Path, tmp_path: Path):
    hf = TransformersBackend(str(tiny))
    hf.load()
    ct2 = CTranslate2Backend(str(tiny), compute_type="float32", ct2_dir=tmp_path / "ct2")
    ct2.load()  # converted through the service's own path
    assert (tmp_path / "ct2" / "model.bin").is_file() and (tmp_path / "ct2" / "tokenizer_config.json").is_file()
    prompts = ["hello world", "what time is it", "hi"]
    assert run_greedy(hf, prompts) == run_greedy(ct2, prompts)
    # Same log-probabilities too (the transformers-5 output-scale fix: without it CT2's are ~sqrt(d_model) flatter).
    source, cands = hf.encode("hello"), [hf.encode("ab"), hf.encode("xyz")]
    for a, b in zip(hf.score(source, cands), ct2.score(source, cands)):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-3)
    assert ct2.describe()["compute_type"] == "float32"


def test_rows_of_one_batch_equal_the_rows_alone(tiny: Path):
    hf = TransformersBackend(str(tiny))
    hf.load()
    prompts = ["one", "a much longer prompt than the other two", "three"]
    together = run_greedy(hf, prompts)  # row r stops after 12 - r tokens (or at EOS)
    alone = [run_greedy(hf, [p])[0] for p in prompts]
    for row, (t, a) in enumerate(zip(together, alone)):
        assert len(t) <= 12 - row  # each row's own stop was honoured
        assert t == a[: len(t)]  # padding in the batch changed nothing


def test_ctranslate2_int8_conversion_happens_once_on_first_load(tiny: Path, tmp_path: Path):
    target = tmp_path / "int8"
    first = CTranslate2Backend(str(tiny), ct2_dir=target)
    first.load()
    assert first.compute_type == "int8"
    stamp = (target / "model.bin").stat().st_mtime_ns
    CTranslate2Backend(str(tiny), ct2_dir=target).load()
    assert (target / "model.bin").stat().st_mtime_ns == stamp


def test_a_missing_model_offline_fails_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    backend = TransformersBackend("google/flan-t5-base", allow_download=False)
    with pytest.raises(Exception, match="google/flan-t5-base is not in the Hugging Face cache and downloads are off"):
        backend.load()
    ct2 = CTranslate2Backend("google/flan-t5-base", allow_download=False, ct2_dir=tmp_path / "none")
    with pytest.raises(Exception, match="no CTranslate2 model in"):
        ct2.load()


def test_not_a_seq2seq_directory(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="lacks config.json"):
        TransformersBackend(str(tmp_path / "empty")).load()
