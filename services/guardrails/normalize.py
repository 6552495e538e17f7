"""Text normalisation against obfuscation: two views of one text.

- `clean(text)` is what answers carry as ``sanitized``: Unicode NFKC (full-width letters, mathematical
  alphanumerics, ligatures become plain characters), invisible characters removed (zero-width spaces and
  joiners, soft hyphens, bidirectional controls, variation selectors, Unicode *tag* characters, other control
  characters), runs of spaces collapsed. Case, accents and scripts are kept: it is still the user's text.
- `matching_view(text)` is what the pattern scanner reads, and is lossy on purpose: lower case, accents
  stripped, look-alike letters from other scripts (Cyrillic ``а``, Greek ``ο`` ...) mapped to ASCII inside
  Latin words, leetspeak inside words (``ign0re``, ``pr0mpt``) undone, letters spaced or dotted apart
  (``i g n o r e``, ``i.g.n.o.r.e``) joined, hyphens inside words dropped (``i-nstruction``), and text
  hidden in Unicode tag characters decoded and appended.

`Obfuscation` counts what was undone, so a scanner can treat the trick itself as a signal.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Zero-width and formatting characters that render as nothing.
_INVISIBLE = {0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180E, 0x180F,
              0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064, 0x3164, 0xFEFF,
              0xFFA0}
_BIDI = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))
_TAGS = range(0xE0000, 0xE0080)  # "ASCII smuggling": invisible copies of ASCII
_VARIATION = set(range(0xFE00, 0xFE10)) | set(range(0xE0100, 0xE01F0))

# Look-alikes of Latin letters in other scripts (Unicode confusables, the common subset). NFKC already maps
# full-width and mathematical letters; these survive it.
CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w",
    "һ": "h", "ӏ": "l", "ɡ": "g", "ո": "n", "ս": "u", "օ": "o", "ց": "g", "ք": "p",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "γ": "y", "ω": "w", "ϲ": "c", "ϳ": "j",
    # Latin extensions and symbols
    "ı": "i", "ȷ": "j", "ℓ": "l", "ß": "ss", "ø": "o", "đ": "d", "ł": "l", "ƒ": "f", "ǝ": "e", "ɑ": "a",
    "ɩ": "i", "ʏ": "y", "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ɢ": "g", "ʜ": "h", "ɪ": "i",
    "ᴊ": "j", "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ʀ": "r", "ꜱ": "s", "ᴛ": "t",
    "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z",
}
LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s", "!": "i",
        "|": "l", "€": "e"}

_SPACES = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_LEET_TOKEN = re.compile(r"[a-z0-9@$!|€]+")
# 4+ single letters split by the same kind of separator: "i g n o r e", "i.g.n.o.r.e", "i-g-n-o-r-e"
_SPACED = re.compile(r"(?<![a-z0-9])[a-z](?:(?:[ ._*\-/]|  )[a-z](?![a-z0-9])){3,}")
_INNER_HYPHEN = re.compile(r"(?<=[a-z])[-\u2010\u2011](?=[a-z])")


@dataclass(frozen=True)
class Obfuscation:
    """What the normaliser undid; all counts are of characters or tokens in the input."""

    invisible: int = 0
    """Zero-width, bidi, variation-selector and control characters removed."""
    invisible_in_words: int = 0
    """Of those, how many sat between two letters (splitting a word)."""
    tags: int = 0
    """Unicode tag characters (invisible ASCII), decoded into the matching view."""
    confusable_words: int = 0
    """Words whose look-alike letters were mapped to ASCII."""
    leet_words: int = 0
    """Words whose digits/symbols were read as letters."""
    spaced_letters: int = 0
    """Letters that were spelled out apart ("i g n o r e") and joined back."""


def _is_invisible(cp: int, ch: str) -> bool:
    if cp in _INVISIBLE or cp in _BIDI or cp in _VARIATION or cp in _TAGS:
        return True
    return unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\n\t\r"


def _strip(text: str) -> tuple[str, str, int, int]:
    """(visible text, decoded tag text, invisible count, invisible-inside-word count)."""
    out: list[str] = []
    tags: list[str] = []
    removed = inside = 0
    n = len(text)
    for i, ch in enumerate(text):
        cp = ord(ch)
        if cp in _TAGS:
            if 0xE0020 <= cp <= 0xE007E:
                tags.append(chr(cp - 0xE0000))
            removed += 1
            continue
        if _is_invisible(cp, ch):
            removed += 1
            before = out[-1] if out else ""
            after = next((c for c in text[i + 1:n] if not _is_invisible(ord(c), c)), "")
            if before.isalpha() and after.isalpha():
                inside += 1
            continue
        out.append(ch)
    return "".join(out), "".join(tags), removed, inside


def _tidy(text: str) -> str:
    text = _SPACES.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " "))
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def clean(text: str) -> str:
    """The text as answers return it (``sanitized``): NFKC, invisible characters removed, spaces tidied."""
    visible, _tags, _n, _inside = _strip(unicodedata.normalize("NFKC", text))
    return _tidy(visible)


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if unicodedata.category(c) != "Mn"))


def _map_confusables(text: str) -> tuple[str, int]:
    """Map look-alikes inside words that are Latin already or made only of look-alikes (``іgnоrе``),
    leaving words of other scripts alone (Russian stays Russian)."""
    count = 0

    def fix(m: re.Match[str]) -> str:
        nonlocal count
        word = m.group(0)
        if not any(c in CONFUSABLES for c in word):
            return word
        mixed = any("a" <= c <= "z" for c in word)  # Latin letters with look-alikes among them
        disguised = len(word) >= 3 and all(c in CONFUSABLES or c.isdigit() for c in word)
        if not (mixed or disguised):
            return word
        count += 1
        return "".join(CONFUSABLES.get(c, c) for c in word)

    return _WORD.sub(fix, text), count


def _undo_leet(text: str) -> tuple[str, int]:
    """Read digits and symbols as letters inside words with at least three letters: ``ign0re`` -> ``ignore``,
    ``pr0mpt`` -> ``prompt``; numbers ("7", "2023") and mostly-digit tokens ("4k", "mp3") are left alone.
    Symbols count only between letters (``p@ss``), so ``$system`` and ``hello!`` are kept."""
    count = 0

    def fix(m: re.Match[str]) -> str:
        nonlocal count
        token = m.group(0)
        letters = sum("a" <= c <= "z" for c in token)
        if letters < 3 or letters < (len(token) + 1) // 2 or token.isalpha():
            return token
        chars = list(token)
        changed = False
        for i, c in enumerate(chars):
            if c not in LEET:
                continue
            prev_alpha = i > 0 and chars[i - 1].isalpha()
            next_alpha = i + 1 < len(chars) and token[i + 1].isalpha()
            if c.isdigit() and (prev_alpha or next_alpha) or (not c.isdigit() and prev_alpha and next_alpha):
                chars[i] = LEET[c]
                changed = True
        if changed:
            count += 1
        return "".join(chars)

    return _LEET_TOKEN.sub(fix, text), count


def _join_spaced(text: str) -> tuple[str, int]:
    count = 0

    def join(m: re.Match[str]) -> str:
        nonlocal count
        letters = re.sub(r"[^a-z]", "", m.group(0))
        count += len(letters)
        return letters

    return _SPACED.sub(join, text), count


def matching_view(text: str) -> tuple[str, Obfuscation]:
    """The lossy lower-case ASCII-ish view that patterns match against, and what was undone to get it."""
    visible, tags, removed, inside = _strip(unicodedata.normalize("NFKC", text))
    view = _strip_accents(visible.casefold())
    view, confusable = _map_confusables(view)
    view, leet = _undo_leet(view)
    view, spaced = _join_spaced(view)
    view = _INNER_HYPHEN.sub("", view)
    view = _tidy(view)
    if tags.strip():
        view = view + "\n" + _tidy(_strip_accents(tags.casefold()))
    stats = Obfuscation(invisible=removed, invisible_in_words=inside, tags=len(tags), confusable_words=confusable,
                        leet_words=leet, spaced_letters=spaced)
    return view, stats
