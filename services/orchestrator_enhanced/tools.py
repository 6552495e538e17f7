"""The agent's tools (LangChain 1.x): SendDiscordMessage, SearchWeb, GetCurrentTime, Calculator; the first two
only when configured (DISCORD_API_URL, SEARCH_URL).

`build_tools` returns them for ``langchain.agents.create_agent(..., context_schema=TurnContext)``. Rules
they all follow:

- **Honest failures.** A tool never lets an exception reach the user. Anything that goes wrong (not
  configured, unreachable, timeout, an HTTP error, a bad argument, a bug) becomes a `ToolException` whose
  text is one sentence fit to be spoken ("I couldn't reach Discord just now, so the message wasn't sent.");
  ``handle_tool_error=True`` turns it into a ``ToolMessage(status="error")`` for the model. Sentences
  never carry exception text, URLs or tokens; the real error is logged here.
- **HTTP through `ServiceClient`.** Discord and search calls get the fleet's rules (the turn's deadline
  tightened by ``TOOLS_TIMEOUT_S``, correlation id, bearer token, circuit breaker per target). Retries
  only for the idempotent search GET: a Discord POST is sent once.
- **Injected context.** SendDiscordMessage declares ``runtime: ToolRuntime[TurnContext, Any]``; langgraph's
  ToolNode (inside ``create_agent``) injects it and hides it from the model's schema, so
  ``runtime.context`` is the turn's `TurnContext`. Invoking that tool outside a ToolNode needs the runtime
  passed in ``args`` (else it answers with an error sentence, logged as invalid arguments).
- **Calculator** is offline and safe: spoken arithmetic ("12 times 7", "15 percent of 80") is rewritten
  to an expression and evaluated on its AST (numbers, operators, a few functions); never ``eval``.
"""

from __future__ import annotations

import ast
import functools
import html
import logging
import math
import operator
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from langchain.tools import ToolException, ToolRuntime
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import Field, ValidationError

from services.common.errors import (
    DeadlineExceededError,
    ServiceError,
    UpstreamFailedError,
    UpstreamUnavailableError,
)
from services.common.http import ServiceClient
from services.orchestrator_enhanced.settings import Settings
from services.orchestrator_enhanced.turn import TurnContext

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

DISCORD_TARGET = "discord"
SEARCH_TARGET = "search"
"""Target names of the tools' `ServiceClient`s (logs, metrics, circuit breakers)."""

DISCORD_MAX_CHARS = 2000
"""Discord's limit on a message's ``content``."""

SEARCH_QUERY_MAX_CHARS = 300
SNIPPET_MAX_CHARS = 220
"""Longest search snippet handed to the model (cut at a word boundary)."""

CALC_MAX_CHARS = 200
"""Longest expression the calculator accepts."""

CALC_MAX_BITS = 4096
"""Largest integer (in bits) the calculator computes; bigger is refused as too big."""

_CHANNEL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NO_VALUE = frozenset({"", "none", "null", "default"})


# --- descriptions the model reads ---------------------------------------------------------------------------

SEND_DISCORD_DESCRIPTION = (
    "Post a text message to a Discord channel. Use it only when the user asks you to send, post or share "
    "something on Discord; leave channel_id empty unless the user gives a channel id."
)
SEARCH_WEB_DESCRIPTION = (
    "Search the web and get the top results as short snippets. Use it for news, current events, prices, "
    "weather or any fact you are not sure of or that may have changed recently."
)
CURRENT_TIME_DESCRIPTION = (
    "Get the current time, day and date. Use it whenever the user asks what time it is, today's date or "
    "the day of the week; pass a time zone only if the user names a place."
)
CALCULATOR_DESCRIPTION = (
    "Work out arithmetic exactly: add, subtract, multiply, divide, percentages, powers and square roots. "
    "Use it for any calculation with numbers instead of doing it in your head."
)


# --- the tools ------------------------------------------------------------------------------------------------


def build_tools(settings: Settings, *, clock: Callable[[], datetime] | None = None) -> list[BaseTool]:
    """The agent's tools that can work here, in this order: SendDiscordMessage (only with DISCORD_API_URL),
    SearchWeb (only with SEARCH_URL), GetCurrentTime, Calculator. A tool that could only answer "not
    configured" is not offered: a small model offered it calls it instead of answering (or saying it can't).

    ``clock`` returns the current time as an aware datetime (tests fix it); default: the system clock, UTC.
    """
    kit = _Toolkit(settings, clock or _utc_now)

    async def send_discord_message(
        message: Annotated[str, Field(description="The exact text to post.")],
        runtime: ToolRuntime[TurnContext, Any],
        channel_id: Annotated[
            str | None, Field(description="Discord channel id; leave empty for the conversation's channel.",
                              max_length=64)
        ] = None,
    ) -> str:
        return await kit.send_discord_message(message, channel_id, runtime.context)

    async def search_web(
        query: Annotated[str, Field(description="What to search for, in a few keywords.", max_length=200)],
    ) -> str:
        return await kit.search_web(query)

    async def get_current_time(
        timezone: Annotated[
            str | None, Field(description="IANA time zone such as Europe/Berlin; empty for the default.",
                              max_length=64)
        ] = None,
    ) -> str:
        return kit.current_time(timezone)

    async def calculator(
        expression: Annotated[str, Field(description="The calculation, e.g. '12 * 7' or '15 percent of 80'.")],
    ) -> str:
        return calculate(expression)

    tools = []
    if settings.discord_api_url:
        tools.append(_make_tool(send_discord_message, "SendDiscordMessage", SEND_DISCORD_DESCRIPTION,
                                "send that to Discord"))
    if settings.search_url:
        tools.append(_make_tool(search_web, "SearchWeb", SEARCH_WEB_DESCRIPTION, "look that up"))
    tools.append(_make_tool(get_current_time, "GetCurrentTime", CURRENT_TIME_DESCRIPTION, "tell the time"))
    tools.append(_make_tool(calculator, "Calculator", CALCULATOR_DESCRIPTION, "work that out"))
    return tools


def _make_tool(coroutine: Callable[..., Awaitable[str]], name: str, description: str, action: str) -> BaseTool:
    """A StructuredTool whose failures come back as spoken sentences (``action``: "look that up")."""
    return StructuredTool.from_function(
        coroutine=_guarded(name, action)(coroutine),
        name=name,
        description=description,
        handle_tool_error=True,
        handle_validation_error=functools.partial(_bad_arguments, name, action),
    )


def _guarded(name: str, action: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Turn any unexpected exception of a tool into a logged, honest `ToolException`."""

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except ToolException:
                raise
            except Exception as exc:
                log.exception("tool %s failed unexpectedly", name)
                raise ToolException(f"Something went wrong on my side, so I couldn't {action}.") from exc

        return run

    return wrap


def _bad_arguments(name: str, action: str, exc: ValidationError | Exception) -> str:
    """handle_validation_error: the arguments the model got wrong, as one sentence."""
    errors = exc.errors() if isinstance(exc, ValidationError) else []
    fields = sorted({str(e["loc"][0]) for e in errors if e.get("loc")} - {"runtime"})
    log.warning("tool %s got invalid arguments: %s", name, exc)
    if not fields:
        return f"Something went wrong on my side, so I couldn't {action}."
    which = " and ".join(fields)
    return f"I couldn't {action} because the {which} I was given {'were' if len(fields) > 1 else 'was'} not valid."


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class _Toolkit:
    """What the tools share: settings, their HTTP clients and the clock."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime]) -> None:
        self.settings = settings
        self.clock = clock
        self.discord = (
            ServiceClient.from_settings(DISCORD_TARGET, settings.discord_api_url, settings)
            if settings.discord_api_url
            else None
        )
        self.search: ServiceClient | None = None
        self.search_path = "/search"
        self.search_params: dict[str, str] = {}
        if settings.search_url:
            parts = urlsplit(settings.search_url)
            self.search = ServiceClient.from_settings(SEARCH_TARGET, f"{parts.scheme}://{parts.netloc}", settings)
            self.search_path = parts.path if parts.path.strip("/") else "/search"
            self.search_params = dict(parse_qsl(parts.query))

    # --- SendDiscordMessage ---------------------------------------------------------------------------------

    async def send_discord_message(self, message: str, channel_id: str | None, turn: TurnContext | None) -> str:
        assert self.discord is not None, "SendDiscordMessage is only offered with DISCORD_API_URL"
        text = message.strip()
        if not text:
            raise ToolException("There was nothing to send, so I didn't post anything to Discord.")
        if len(text) > DISCORD_MAX_CHARS:
            raise ToolException(
                f"That message is {len(text)} characters long but Discord allows at most {DISCORD_MAX_CHARS}, "
                "so I didn't send it; a shorter version would work."
            )
        channel = self._channel(channel_id, turn)
        try:
            await self.discord.post(
                f"/channels/{channel}/messages", json={"content": text}, timeout_s=self.settings.tools_timeout_s
            )
        except ServiceError as exc:
            log.warning("SendDiscordMessage to channel %s failed: %r", channel, exc)
            raise ToolException(_discord_failure(exc)) from exc
        log.info("SendDiscordMessage posted %d characters to channel %s", len(text), channel)
        return "I sent that to Discord."

    def _channel(self, requested: str | None, turn: TurnContext | None) -> str:
        """The model's channel, else the turn's, else the default; refused when none or malformed."""
        for candidate in (requested, getattr(turn, "channel_id", None), self.settings.discord_default_channel_id):
            if candidate is None or candidate.strip().lower() in _NO_VALUE:
                continue
            channel = candidate.strip()
            if channel.startswith("<#") and channel.endswith(">"):  # a Discord channel mention
                channel = channel[2:-1]
            channel = channel.lstrip("#")
            if not _CHANNEL_ID.match(channel):
                raise ToolException("That isn't a Discord channel id I can use, so I didn't send the message.")
            return channel
        raise ToolException("I don't know which Discord channel to post to, so I didn't send the message.")

    # --- SearchWeb ------------------------------------------------------------------------------------------

    async def search_web(self, query: str) -> str:
        assert self.search is not None, "SearchWeb is only offered with SEARCH_URL"
        query = " ".join(query.split())[:SEARCH_QUERY_MAX_CHARS]
        if not query:
            raise ToolException("I wasn't given anything to search for.")
        params = {**self.search_params, "q": query, "format": "json"}
        try:
            response = await self.search.get(self.search_path, params=params, timeout_s=self.settings.tools_timeout_s)
        except ServiceError as exc:
            if getattr(exc, "upstream_status", None) == 403:
                log.warning("SearchWeb refused (403): does the SearXNG instance allow format=json? %r", exc)
            else:
                log.warning("SearchWeb failed: %r", exc)
            raise ToolException(_search_failure(exc)) from exc
        try:
            body = response.json()
            results = body["results"]
            if not isinstance(results, list):
                raise TypeError("results is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("SearchWeb got an unreadable answer (%s): %s", exc, response.text[:200])
            raise ToolException("The web search service gave an answer I couldn't read, so I can't look that up.") \
                from exc
        return format_results(query, results, self.settings.search_max_results)

    # --- GetCurrentTime -------------------------------------------------------------------------------------

    def current_time(self, zone_name: str | None) -> str:
        name = (zone_name or "").strip() or self.settings.assistant_timezone
        zone = find_zone(name)
        if zone is None:
            shown = name if len(name) <= 64 else name[:61] + "..."
            raise ToolException(f'I don\'t know a time zone called "{shown}", so I can\'t tell the time there.')
        now = self.clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=timezone.utc)
        return f"It's {spoken_time(now.astimezone(zone))} in {zone.key}."


# --- failures as sentences ------------------------------------------------------------------------------------


def _discord_failure(exc: ServiceError) -> str:
    if isinstance(exc, DeadlineExceededError):
        return "Discord didn't answer in time, so I'm not sure the message was sent."
    if isinstance(exc, UpstreamUnavailableError):
        return "I couldn't reach Discord just now, so the message wasn't sent."
    status = exc.upstream_status if isinstance(exc, UpstreamFailedError) else None
    if status == 404:
        return "Discord doesn't know that channel, so the message wasn't sent."
    if status in (401, 403):
        return "I'm not allowed to post in that Discord channel, so the message wasn't sent."
    if status == 429:
        return "Discord is limiting how fast I can post right now, so the message wasn't sent; try again shortly."
    if status is not None and status < 500:
        return "Discord refused the message, so it wasn't sent."
    return "Discord had a problem just now, so the message wasn't sent."


def _search_failure(exc: ServiceError) -> str:
    if isinstance(exc, DeadlineExceededError):
        return "The web search took too long to answer, so I can't look that up right now."
    if isinstance(exc, UpstreamUnavailableError):
        return "I couldn't reach the web search service just now, so I can't look that up."
    status = exc.upstream_status if isinstance(exc, UpstreamFailedError) else None
    if status == 429:
        return "The web search service is busy right now, so I can't look that up; try again shortly."
    if status is not None and status < 500:
        return "The web search service turned the request down, so I can't look that up."
    return "The web search service had a problem just now, so I can't look that up."


# --- search results -------------------------------------------------------------------------------------------

_TAG = re.compile(r"<[^>]+>")


def _clean(text: Any) -> str:
    """Plain single-line text: HTML tags and entities removed, whitespace collapsed."""
    if not isinstance(text, str):
        return ""
    return " ".join(html.unescape(_TAG.sub(" ", text)).split())


def _trim(text: str, limit: int) -> str:
    """``text`` cut at a word boundary to at most ``limit`` characters (an ellipsis marks the cut)."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


def format_results(query: str, results: list[Any], max_results: int) -> str:
    """SearXNG ``results`` as compact text for the model: a count line, then ``N. Title: snippet`` lines."""
    usable = []
    for item in results:
        if not isinstance(item, dict):
            continue
        title, snippet = _clean(item.get("title")), _clean(item.get("content"))
        if title or snippet:
            usable.append((_trim(title, 120), _trim(snippet, SNIPPET_MAX_CHARS)))
    if not usable:
        return f'The web search found nothing for "{query}".'
    shown = usable[:max_results]
    head = (
        f'Web search for "{query}": {len(usable)} result{"s" if len(usable) != 1 else ""}'
        + (f", top {len(shown)}:" if len(shown) < len(usable) else ":")
    )
    lines = [head]
    for number, (title, snippet) in enumerate(shown, 1):
        lines.append(f"{number}. {title}: {snippet}" if title and snippet else f"{number}. {title or snippet}")
    return "\n".join(lines)


# --- time -----------------------------------------------------------------------------------------------------

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


def spoken_time(moment: datetime) -> str:
    """``3:05 PM on Tuesday, 24 November 2026`` (English whatever the locale)."""
    hour = moment.hour % 12 or 12
    half = "AM" if moment.hour < 12 else "PM"
    return (f"{hour}:{moment.minute:02d} {half} on {_WEEKDAYS[moment.weekday()]}, {moment.day} "
            f"{_MONTHS[moment.month - 1]} {moment.year}")


@functools.lru_cache(maxsize=1)
def _zone_index() -> tuple[dict[str, str], dict[str, list[str]]]:
    """Known zones by lower-cased name, and by lower-cased last component (``berlin`` -> Europe/Berlin)."""
    by_name: dict[str, str] = {}
    by_city: dict[str, list[str]] = {}
    for key in available_timezones():
        by_name[key.lower()] = key
        by_city.setdefault(key.rsplit("/", 1)[-1].lower(), []).append(key)
    return by_name, by_city


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # unknown, malformed ("../x"), a directory ("Europe")
        return None


def find_zone(name: str) -> ZoneInfo | None:
    """The IANA zone ``name`` names, tolerating case, spaces for underscores and a bare city (``berlin``)."""
    zone = _zone(name)
    if zone is not None:
        return zone
    key = name.strip().replace(" ", "_").lower()
    by_name, by_city = _zone_index()
    if key in by_name:
        return _zone(by_name[key])
    cities = [zone_key for zone_key in by_city.get(key, []) if "/" in zone_key]
    return _zone(cities[0]) if len(cities) == 1 else None


# --- calculator -----------------------------------------------------------------------------------------------


class CalcError(Exception):
    """A calculation refused or impossible; the message is the sentence to answer with."""


_BIN_OPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def _sqrt(x: float) -> float:
    if x < 0:
        raise CalcError("A negative number has no real square root.")
    root = math.isqrt(x) if isinstance(x, int) else None
    return root if root is not None and root * root == x else math.sqrt(x)


def _round(x: float, digits: int = 0) -> float:
    """Round half up, as people do (Python's ``round`` gives 2 for 2.5)."""
    if not isinstance(digits, int) or not 0 <= digits <= 15:
        raise CalcError("I can round to between 0 and 15 decimal places.")
    if isinstance(x, int) or abs(x) >= 1e15:  # nothing after the point to round
        return x
    rounded = Decimal(str(x)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return int(rounded) if digits == 0 else float(rounded)


_FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    # name: (function, fewest arguments, most arguments)
    "sqrt": (_sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (min, 1, 20),
    "max": (max, 1, 20),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}

# Spoken operators, longest phrases first: token sequence -> replacement tokens.
_PHRASES: list[tuple[tuple[str, ...], tuple[str, ...]]] = sorted(
    [
        (("raised", "to", "the", "power", "of"), ("**",)),
        (("to", "the", "power", "of"), ("**",)),
        (("to", "the", "power"), ("**",)),
        (("raised", "to"), ("**",)),
        (("power", "of"), ("**",)),
        (("multiplied", "by"), ("*",)),
        (("times",), ("*",)),
        (("x",), ("*",)),
        (("divided", "by"), ("/",)),
        (("over",), ("/",)),
        (("plus",), ("+",)),
        (("minus",), ("-",)),
        (("negative",), ("-",)),
        (("modulo",), ("%",)),
        (("mod",), ("%",)),
        (("percent", "of"), ("/", "100", "*")),
        (("%", "of"), ("/", "100", "*")),
        (("percent",), ("/", "100")),
        (("squared",), ("**", "2")),
        (("cubed",), ("**", "3")),
        (("square", "root", "of"), ("sqrt",)),
        (("square", "root"), ("sqrt",)),
        (("root", "of"), ("sqrt",)),
        (("the",), ()),
    ],
    key=lambda pair: -len(pair[0]),
)
_LEADING = re.compile(
    r"^\s*(?:please\s+)?(?:what\s+is|what's|whats|how\s+much\s+is|calculate|compute|work\s+out|evaluate)\s+",
    re.IGNORECASE,
)
_TRAILING = re.compile(r"(?:\s*(?:=|equals|equal|[?.!]))+\s*$", re.IGNORECASE)
_TOKEN = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?|\.\d+|[a-z_]+|\*\*|//|\S")
_NUMBER = re.compile(r"^(?:\d+(?:\.\d+)?(?:e[+-]?\d+)?|\.\d+)$")


def _strip_filler(text: str) -> str:
    """The expression without "what is" before it and "?" or "equals" after it, whitespace collapsed."""
    text = _TRAILING.sub("", _LEADING.sub("", text.strip()))
    return " ".join(text.split())


def _number_words(tokens: list[str]) -> list[str]:
    """Runs of number words as one number token: ``twenty five`` -> ``25``, ``three point five`` -> ``3.5``."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] not in _UNITS and tokens[i] not in _TENS:
            out.append(tokens[i])
            i += 1
            continue
        total = current = 0
        while i < len(tokens):
            word = tokens[i]
            if word in _UNITS:
                current += _UNITS[word]
            elif word in _TENS:
                current += _TENS[word]
            elif word == "hundred":
                current = max(current, 1) * 100
            elif word in _SCALES:
                total += max(current, 1) * _SCALES[word]
                current = 0
            elif word == "and" and i + 1 < len(tokens) and (tokens[i + 1] in _UNITS or tokens[i + 1] in _TENS):
                pass
            else:
                break
            i += 1
        number = str(total + current)
        if i + 1 < len(tokens) and tokens[i] == "point" and tokens[i + 1] in _UNITS:
            i += 1
            decimals = ""
            while i < len(tokens) and tokens[i] in _UNITS and _UNITS[tokens[i]] < 10:
                decimals += str(_UNITS[tokens[i]])
                i += 1
            number += "." + decimals
        out.append(number)
    return out


def _spoken_operators(tokens: list[str]) -> list[str]:
    """Spoken operators as symbols (`_PHRASES`): ``3 plus 4`` -> ``3 + 4``."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for phrase, symbols in _PHRASES:
            if tuple(tokens[i : i + len(phrase)]) == phrase:
                out.extend(symbols)
                i += len(phrase)
                break
        else:
            out.append(tokens[i])
            i += 1
    return out


def _percent_signs(tokens: list[str]) -> list[str]:
    """``%`` at the end or before an operator is a percentage (``50%`` -> ``50 / 100``); ``10 % 3`` is modulo."""
    out: list[str] = []
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if token == "%" and (following is None or following in {"+", "-", "*", "/", "//", "**", ")", ","}):
            out.extend(["/", "100"])
        else:
            out.append(token)
    return out


def _bare_calls(tokens: list[str]) -> list[str]:
    """A function named without parentheses applies to the number after it: ``sqrt 16`` -> ``sqrt ( 16 )``."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] in _FUNCTIONS and i + 1 < len(tokens) and _NUMBER.match(tokens[i + 1]):
            out.extend([tokens[i], "(", tokens[i + 1], ")"])
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


def to_expression(spoken: str) -> str:
    """A voice transcript's arithmetic as a Python-syntax expression (not yet checked: see `evaluate`)."""
    text = _strip_filler(spoken).lower()
    for symbol, spelled in (("×", " * "), ("÷", " / "), ("−", " - "), ("–", " - "), ("^", " ** ")):
        text = text.replace(symbol, spelled)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # 1,000,000 -> 1000000
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)  # twenty-five -> twenty five
    tokens = _number_words(_TOKEN.findall(text))
    return " ".join(_bare_calls(_percent_signs(_spoken_operators(tokens))))


def _check_size(value: Any) -> Any:
    if isinstance(value, complex):
        raise CalcError("That has no real-number answer.")
    if isinstance(value, int) and value.bit_length() > CALC_MAX_BITS:
        raise CalcError("That number is too big for me to work out.")
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        raise CalcError("That number is too big for me to work out.")
    return value


def _power(base: Any, exponent: Any) -> Any:
    """``base ** exponent``, refusing integer results too big to compute (float overflow raises by itself)."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > CALC_MAX_BITS:
            raise CalcError("That number is too big for me to work out.")
    return operator.pow(base, exponent)


def _eval_node(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check_size(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _eval_node(node.operand)
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp):
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right))
        op = _BIN_OPS.get(type(node.op))
        if op is not None:
            return _check_size(op(left, right))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
        and not any(isinstance(arg, ast.Starred) for arg in node.args)
    ):
        function, fewest, most = _FUNCTIONS[node.func.id]
        if not fewest <= len(node.args) <= most:
            raise CalcError(f"{node.func.id} takes {fewest if fewest == most else f'{fewest} to {most}'} "
                            f"number{'s' if most > 1 else ''}.")
        return _check_size(function(*(_eval_node(arg) for arg in node.args)))
    raise CalcError(
        "I can only work out arithmetic with numbers, + - * /, powers, percentages and functions like sqrt, "
        "so I can't calculate that."
    )


def evaluate(expression: str) -> int | float:
    """The value of a Python-syntax arithmetic expression, by walking its AST (never ``eval``)."""
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise CalcError("I couldn't understand that as a calculation.") from exc
    try:
        return _eval_node(tree)
    except ZeroDivisionError as exc:
        raise CalcError("That would mean dividing by zero, which has no answer.") from exc
    except OverflowError as exc:
        raise CalcError("That number is too big for me to work out.") from exc
    except RecursionError as exc:
        raise CalcError("That calculation is nested too deeply for me.") from exc
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise CalcError("That calculation has no answer I can give.") from exc


def speakable(value: int | float) -> tuple[str, bool]:
    """``value`` written to be read aloud, and whether that is exact (else the answer says "about").

    Integers below 10**15 are exact with thousands separators; other values get six significant digits,
    or ``1.23 times 10 to the power of 20`` when very large or small. Float noise (0.1 + 0.2) counts as exact.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    if isinstance(value, int):
        if abs(value) < 10**15:
            return f"{value:,}", True
        value = float(value)
    if value == 0:
        return "0", True
    exponent = math.floor(math.log10(abs(value)))
    if exponent >= 15 or exponent < -6:
        mantissa = float(f"{value / 10**exponent:.3g}")
        text, shown = f"{mantissa:g} times 10 to the power of {exponent}", mantissa * 10.0**exponent
    else:
        digits = max(0, 5 - exponent)  # six significant digits
        shown = round(value, digits)
        text = f"{shown:,.{digits}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
    return text, math.isclose(shown, value, rel_tol=1e-12)


def calculate(spoken: str) -> str:
    """Calculator's answer: ``"12 times 7 is 84."``; a refusal raises `ToolException` with the reason."""
    if len(spoken) > CALC_MAX_CHARS:
        raise ToolException(
            f"That calculation is longer than {CALC_MAX_CHARS} characters, which is more than I handle; "
            "please give me a shorter one."
        )
    shown = _strip_filler(spoken)
    if not shown:
        raise ToolException("I wasn't given anything to calculate.")
    try:
        value = evaluate(to_expression(spoken))
    except CalcError as exc:
        log.info("Calculator refused %r: %s", spoken, exc)
        raise ToolException(str(exc)) from exc
    text, exact = speakable(value)
    return f"{shown} is {text}." if exact else f"{shown} is about {text}."
