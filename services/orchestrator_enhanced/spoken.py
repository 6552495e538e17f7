"""What may be read aloud: streamed answer text cut into sentences and cleaned for a listener.

`split_sentences` cuts streamed text into sentences (the first piece may end at a clause, so speech starts
early). `SpokenFilter` sits between the LLM's stream and everything downstream (guardrails, TTS, memory, the
response body) and passes on only complete sentences, each:

- **said once**: a sentence whose words were already said this turn is dropped (small models loop, and a
  tool's failure sentence must not follow the model saying the same);
- **free of tool syntax**: ``functions.Calculator: {...}``, ``<tool_call>``, a bare JSON object or a
  ``message:`` header are never read out (a model writing a call as text instead of calling);
- **plain**: markdown (``**bold**``, headings, bullets, code ticks) and emoji are removed.
"""

from __future__ import annotations

import re
import unicodedata

_SENTENCE_END = re.compile(r"(?<=[.!?;])[\"')\]]*\s+|\n+")
LONG_SENTENCE_CHARS = 220
"""A sentence still growing past this many characters is cut at its last comma (or space) so speech starts."""

FIRST_CLAUSE_WORDS = 4
"""The first piece of an answer may end at a clause (a comma after at least this many words), so its speech
starts before the first sentence is complete."""


def split_sentences(buffer: str, *, final: bool = False, first: bool = False) -> tuple[list[str], str]:
    """(complete sentences, the unfinished rest) of streamed text. ``final`` flushes the rest; ``first`` (nothing
    of the answer was cut yet) also accepts a clause of FIRST_CLAUSE_WORDS+ words ending in a comma."""
    sentences: list[str] = []
    start = 0
    if first:
        m = _SENTENCE_END.search(buffer)
        head = buffer[:m.start()] if m else buffer
        comma = head.find(", ")
        while comma >= 0 and len(head[:comma].split()) < FIRST_CLAUSE_WORDS:
            comma = head.find(", ", comma + 1)
        if comma >= 0:
            sentences.append(head[:comma + 1].strip())
            start = comma + 2
    for m in _SENTENCE_END.finditer(buffer):
        piece = buffer[start:m.end()].strip()
        if piece:
            sentences.append(piece)
        start = m.end()
    rest = buffer[start:]
    while len(rest) > LONG_SENTENCE_CHARS:
        cut = rest.rfind(", ", 0, LONG_SENTENCE_CHARS)
        cut = cut + 1 if cut > 0 else rest.rfind(" ", 0, LONG_SENTENCE_CHARS)
        if cut <= 0:
            cut = LONG_SENTENCE_CHARS
        sentences.append(rest[:cut].strip())
        rest = rest[cut:]
    if final and rest.strip():
        sentences.append(rest.strip())
        rest = ""
    return sentences, rest


_TOOL_SYNTAX = re.compile(
    r"\bfunctions\.\w+|</?tool_call>|<\|[a-z_]+\|>|^\s*[\[{]\s*\"|\"\s*:\s*[\"{\[\d]|\b[A-Z][a-zA-Z]+\(\s*[a-z_]+\s*=",
)
_HEADER = re.compile(r"^\s*(?:message|assistant|answer)\s*:\s*", re.IGNORECASE)
_MARKDOWN = re.compile(r"\*\*|__|`+|^\s{0,3}#{1,6}\s+|^\s*(?:[-*•]|\d+[.)])\s+(?=\S)", re.MULTILINE)
_SPACES = re.compile(r"\s+")


def plain(sentence: str) -> str:
    """``sentence`` without markdown marks, emoji or a ``message:`` header; whitespace collapsed."""
    text = _MARKDOWN.sub("", _HEADER.sub("", sentence))
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("So", "Cs", "Co")
                   and ch not in "\u200d\ufe0f")
    return _SPACES.sub(" ", text).strip()


def words_of(text: str) -> str:
    """The words of ``text``, lower-cased, without punctuation: what makes two sentences the same when heard."""
    return " ".join(re.findall(r"[\w']+", text.lower()))


def is_tool_syntax(sentence: str) -> bool:
    return bool(_TOOL_SYNTAX.search(sentence))


class SpokenFilter:
    """One turn's answer text: `feed` streamed deltas, get back what may be read aloud (complete sentences,
    each after a space but the first); `flush` at the end. `text` is everything passed on so far, exactly the
    concatenation of what was returned."""

    def __init__(self) -> None:
        self._buffer = ""
        self._said: set[str] = set()
        self._out: list[str] = []
        self.dropped: list[tuple[str, str]] = []
        """(reason, sentence) of what was not passed on: ``repeat`` or ``tool_syntax``."""

    @property
    def text(self) -> str:
        return " ".join(self._out)

    def said(self, sentence: str) -> bool:
        """Whether the words of ``sentence`` were already passed on this turn."""
        key = words_of(sentence)
        return bool(key) and key in self._said

    def feed(self, delta: str) -> str:
        self._buffer += delta
        sentences, self._buffer = split_sentences(self._buffer, first=not self._out)
        return self._pass(sentences)

    def flush(self) -> str:
        sentences, self._buffer = split_sentences(self._buffer, final=True, first=not self._out)
        return self._pass(sentences)

    def add(self, text: str) -> str:
        """Text that is complete already (a tool's sentence): the same rules, passed on at once."""
        return self.flush() + self._pass(split_sentences(text, final=True)[0])

    def _pass(self, sentences: list[str]) -> str:
        out = []
        for raw in sentences:
            if is_tool_syntax(raw):
                self.dropped.append(("tool_syntax", raw))
                continue
            sentence = plain(raw)
            key = words_of(sentence)
            if not key:
                continue
            if key in self._said:
                self.dropped.append(("repeat", sentence))
                continue
            self._said.add(key)
            out.append((" " if self._out else "") + sentence)
            self._out.append(sentence)
        return "".join(out)
