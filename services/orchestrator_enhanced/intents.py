"""Local intents: requests a rule answers exactly, matched before the LLM and answered without it (the way
Home Assistant's Assist matches its local intents first). A match is certain or there is none: anything a
rule does not recognise as a whole goes to the agent unchanged.

- **time and date**: "what time is it (in Tokyo)?", "what's the date today?", "what day of the week is it?"
  -> the GetCurrentTime tool (same clock, same zone rules, same sentence as when the model calls it);
- **arithmetic**: a whole transcript that is a calculation ("what is 12 times 7", "add 25 and 17", "the
  square root of 81") -> the Calculator tool;
- **unit conversions**: "how many metres are in 5 kilometres?", "convert 70 degrees Fahrenheit to Celsius"
  (length, mass, time, volume, temperature) -> an exact answer computed here;
- **a calculation on the previous answer**: "now add 8 to that", "multiply it by 3", "plus 5", "double that",
  when the assistant's previous answer was a number ("6 times 7 is 42.") -> the Calculator tool on that number;
- **small talk about the assistant**: thanks -> "You're welcome."; "what can you do?", "who are you?" -> what
  this assistant can do here, from the tools it is offered (a model cannot know which are configured);
- **what the assistant cannot do**: commands for timers, alarms and reminders, devices (lights, thermostat,
  locks), media ("play ...") and phone calls, and, while their tools are not offered, web look-ups (search,
  news, weather, prices, scores) and sending messages -> one honest sentence saying so (no tool, no model,
  which a small model would answer by pretending it did them).

`offered` decides, for the agent's model, which tools a request may need (keyword rules per tool: a number or
an arithmetic word for Calculator, a time or date word for GetCurrentTime, ...): the model is offered only
those, since small models call any tool they are shown ("the capital of France" -> GetCurrentTime).

`match` only recognises; `services.orchestrator_enhanced.agent.Agent` runs the tool and records the call, so
a matched turn looks like a turn where the model called that tool (answer, tool call, memory, metrics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from services.orchestrator_enhanced.tools import (
    _FUNCTIONS,
    CalcError,
    _number_words,
    evaluate,
    find_zone,
    speakable,
    to_expression,
)


@dataclass(frozen=True)
class Intent:
    tool: str | None
    """The tool whose work this is: ``GetCurrentTime`` or ``Calculator``; None: something the assistant
    cannot do (``answer`` says so)."""
    args: dict[str, Any] = field(default_factory=dict)
    """Arguments for that tool."""
    answer: str | None = None
    """The answer when it is computed here (conversions); None: the tool's own answer."""


# --- normalising a transcript -----------------------------------------------------------------------------

_POLITE = re.compile(
    r"^(?:(?:hey|hi|ok|okay|so|um|uh|well|atlas|assistant|please|quick question)[,!.]?\s+)*"
    r"(?:(?:can|could|would|will) you (?:please )?(?:tell me|say|work out|calculate|compute|figure out)\s+"
    r"|(?:do you know|tell me|i want to know|i'd like to know)\s+)?",
    re.IGNORECASE,
)
_TAIL = re.compile(r"(?:[\s,]+(?:please|thanks|thank you))?[\s?.!]*$", re.IGNORECASE)


def normalise(text: str) -> str:
    """Lower-cased transcript without greetings, "can you tell me", "please" or end punctuation."""
    text = " ".join(text.replace("’", "'").split())
    text = _TAIL.sub("", _POLITE.sub("", text))
    return text.lower().strip(" ,")


# --- time and date ----------------------------------------------------------------------------------------

_TIME = re.compile(
    r"^(?:what(?:'s| is) the (?:current |exact )?time|what time is it|what time it is|the time)"
    r"(?: (?:right )?now| at the moment)?(?: in (?P<place>[a-z][a-z .'-]{1,40}?))?(?: (?:right )?now)?$"
)
_DATE = re.compile(
    r"^(?:what(?:'s| is) (?:the date|today's date|the day|today)|what date is it|what day is it|"
    r"what day of the week is it|which day is it|what day is today|what date is today|what's the day today|"
    r"what day of the week is today)(?: today)?(?: in (?P<place>[a-z][a-z .'-]{1,40}?))?$"
)


def _time_intent(text: str) -> Intent | None:
    m = _TIME.match(text) or _DATE.match(text)
    if m is None:
        return None
    place = (m.group("place") or "").strip()
    if not place:
        return Intent("GetCurrentTime", {})
    zone = find_zone(place)
    return Intent("GetCurrentTime", {"timezone": zone.key}) if zone is not None else None  # the model may know


# --- arithmetic -------------------------------------------------------------------------------------------

_NUM = r"(?:-?\d[\d,]*(?:\.\d+)?|[a-z]+(?:[ -][a-z]+){0,4}?)"
_VERBS = [
    (re.compile(rf"^add (?P<a>{_NUM}) to (?P<b>{_NUM})$"), "{b} plus {a}"),
    (re.compile(rf"^(?:add|sum) (?P<a>{_NUM}) (?:and|plus) (?P<b>{_NUM})$"), "{a} plus {b}"),
    (re.compile(rf"^subtract (?P<a>{_NUM}) from (?P<b>{_NUM})$"), "{b} minus {a}"),
    (re.compile(rf"^take (?P<a>{_NUM}) (?:away )?from (?P<b>{_NUM})$"), "{b} minus {a}"),
    (re.compile(rf"^multiply (?P<a>{_NUM}) (?:by|and|with) (?P<b>{_NUM})$"), "{a} times {b}"),
    (re.compile(rf"^divide (?P<a>{_NUM}) by (?P<b>{_NUM})$"), "{a} divided by {b}"),
    (re.compile(rf"^what(?:'s| is) (?P<a>{_NUM}) (?:and|plus) (?P<b>{_NUM})$"), "{a} plus {b}"),
]
_OPERATORS = {"+", "-", "*", "/", "//", "%", "**"}
_ALLOWED_WORDS = set(_FUNCTIONS) | {"pi", "e"}


def _arithmetic_intent(text: str) -> Intent | None:
    spoken = text
    for pattern, template in _VERBS:
        m = pattern.match(text)
        if m:
            spoken = template.format(**m.groupdict())
            break
    expression = to_expression(spoken)
    tokens = expression.split()
    words = {t for t in tokens if t[0].isalpha()}
    if not words <= _ALLOWED_WORDS:
        return None  # words that are not arithmetic: not a calculation, or not one a rule understands
    if not (_OPERATORS & set(tokens[1:]) or "sqrt" in words):
        return None  # "what is 7": a number, not a calculation
    try:
        evaluate(expression)
    except CalcError as exc:
        if "understand" in str(exc) or "only work out" in str(exc):
            return None
    return Intent("Calculator", {"expression": spoken})


# --- unit conversions -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    singular: str
    plural: str
    dimension: str
    factor: float
    """Size in the dimension's base unit (metre, gram, second, litre); temperatures convert by formula."""


_UNIT_LIST: list[tuple[Unit, tuple[str, ...]]] = [
    (Unit("millimetre", "millimetres", "length", 0.001), ("millimetre", "millimetres", "millimeter", "millimeters", "mm")),
    (Unit("centimetre", "centimetres", "length", 0.01), ("centimetre", "centimetres", "centimeter", "centimeters", "cm")),
    (Unit("metre", "metres", "length", 1.0), ("metre", "metres", "meter", "meters", "m")),
    (Unit("kilometre", "kilometres", "length", 1000.0), ("kilometre", "kilometres", "kilometer", "kilometers", "km")),
    (Unit("inch", "inches", "length", 0.0254), ("inch", "inches")),
    (Unit("foot", "feet", "length", 0.3048), ("foot", "feet", "ft")),
    (Unit("yard", "yards", "length", 0.9144), ("yard", "yards", "yd")),
    (Unit("mile", "miles", "length", 1609.344), ("mile", "miles", "mi")),
    (Unit("milligram", "milligrams", "mass", 0.001), ("milligram", "milligrams", "mg")),
    (Unit("gram", "grams", "mass", 1.0), ("gram", "grams", "gramme", "grammes", "g")),
    (Unit("kilogram", "kilograms", "mass", 1000.0), ("kilogram", "kilograms", "kilo", "kilos", "kg", "kgs")),
    (Unit("tonne", "tonnes", "mass", 1e6), ("tonne", "tonnes", "metric ton", "metric tons")),
    (Unit("ounce", "ounces", "mass", 28.349523125), ("ounce", "ounces", "oz")),
    (Unit("pound", "pounds", "mass", 453.59237), ("pound", "pounds", "lb", "lbs")),
    (Unit("second", "seconds", "time", 1.0), ("second", "seconds", "sec", "secs")),
    (Unit("minute", "minutes", "time", 60.0), ("minute", "minutes", "min", "mins")),
    (Unit("hour", "hours", "time", 3600.0), ("hour", "hours", "hr", "hrs")),
    (Unit("day", "days", "time", 86400.0), ("day", "days")),
    (Unit("week", "weeks", "time", 604800.0), ("week", "weeks")),
    (Unit("millilitre", "millilitres", "volume", 0.001), ("millilitre", "millilitres", "milliliter", "milliliters", "ml")),
    (Unit("litre", "litres", "volume", 1.0), ("litre", "litres", "liter", "liters", "l")),
    (Unit("degree Celsius", "degrees Celsius", "temperature", 0.0),
     ("degree celsius", "degrees celsius", "celsius", "degree centigrade", "degrees centigrade", "centigrade")),
    (Unit("degree Fahrenheit", "degrees Fahrenheit", "temperature", 0.0),
     ("degree fahrenheit", "degrees fahrenheit", "fahrenheit")),
    (Unit("kelvin", "kelvin", "temperature", 0.0), ("kelvin", "kelvins")),
]
_UNITS = {name: unit for unit, names in _UNIT_LIST for name in names}
_UNIT = "(?:" + "|".join(re.escape(n) for n in sorted(_UNITS, key=len, reverse=True)) + ")"
_AMOUNT = r"(?:-?\d[\d,]*(?:\.\d+)?|an?|[a-z]+(?:[ -][a-z]+){0,4}?)"
_CONVERSIONS = [
    re.compile(rf"^how many (?P<to>{_UNIT}) (?:are |is |make |make up )?(?:there )?(?:in |to )?(?:a |an )?"
               rf"(?P<n>{_AMOUNT}) (?P<from>{_UNIT})$"),
    re.compile(rf"^how many (?P<to>{_UNIT}) (?:are |is )?(?:there )?in (?:a |an |one )(?P<from>{_UNIT})$"),
    re.compile(rf"^(?:convert |what(?:'s| is) |how much is |how many {_UNIT} is )?(?P<n>{_AMOUNT}) (?P<from>{_UNIT}) "
               rf"(?:to|in|into|in terms of|as) (?P<to>{_UNIT})$"),
]


def _amount(text: str | None) -> float | None:
    if text is None or text in ("a", "an"):
        return 1.0
    text = text.replace(",", "")
    try:
        return float(text)
    except ValueError:
        pass
    words = _number_words(text.replace("-", " ").split())
    if len(words) == 1:
        try:
            return float(words[0])
        except ValueError:
            return None
    return None


def _to_base(value: float, unit: Unit) -> float:
    if unit.dimension != "temperature":
        return value * unit.factor
    if unit.singular == "degree Fahrenheit":
        return (value - 32.0) * 5.0 / 9.0
    return value - 273.15 if unit.singular == "kelvin" else value


def _from_base(value: float, unit: Unit) -> float:
    if unit.dimension != "temperature":
        return value / unit.factor
    if unit.singular == "degree Fahrenheit":
        return value * 9.0 / 5.0 + 32.0
    return value + 273.15 if unit.singular == "kelvin" else value


def _named(value: float, unit: Unit) -> str:
    text, exact = speakable(round(value, 10))
    return f"{'' if exact else 'about '}{text} {unit.singular if text in ('1', '-1') else unit.plural}"


def _conversion_intent(text: str) -> Intent | None:
    for pattern in _CONVERSIONS:
        m = pattern.match(text)
        if m is None:
            continue
        source, target = _UNITS[m.group("from")], _UNITS[m.group("to")]
        amount = _amount(m.groupdict().get("n"))
        if amount is None or source.dimension != target.dimension or source == target:
            return None
        result = _from_base(_to_base(amount, source), target)
        if source.dimension == "temperature":
            expression = f"{amount:g} {source.plural} in {target.plural}"
        else:
            expression = f"{amount:g} * {source.factor:g} / {target.factor:g}"
        return Intent("Calculator", {"expression": expression},
                      answer=f"{_named(amount, source).removeprefix('about ')} is {_named(result, target)}.")
    return None


# --- what the assistant cannot do -------------------------------------------------------------------------

_CANNOT: list[tuple[str | None, re.Pattern[str], str]] = [
    (None, re.compile(r"^(?:(?:set|start|create|make|add|put on) .*\b(?:timer|alarm|reminder|countdown)s?\b"
                      r"|remind me\b|wake me\b|(?:cancel|stop|snooze) (?:the |my |all )?(?:timer|alarm|reminder)s?\b)"),
     "Sorry, I can't set timers, alarms or reminders."),
    (None, re.compile(r"^(?:(?:turn|switch|shut|power) (?:on|off|up|down)\b|(?:turn|switch|shut|power) .+ (?:on|off)$"
                      r"|(?:dim|brighten|lock|unlock) (?:the|my|all)\b|(?:set|change|raise|lower|adjust) the "
                      r"(?:thermostat|heating|temperature|lights?|brightness|volume)\b)"),
     "Sorry, I can't control lights, heating or other devices."),
    (None, re.compile(r"^(?:play|shuffle|stream|put on) (?!a game\b|with\b)\S"),
     "Sorry, I can't play music, podcasts or videos."),
    (None, re.compile(r"^(?:call|phone|ring|dial|facetime|video call) (?!me\b)\S"), "Sorry, I can't make phone calls."),
    ("SearchWeb", re.compile(r"^(?:search|google|look up|browse)\b|\b(?:online|on the internet|on the web)\b"
                             r"|\b(?:weather|forecast|news|headlines|stock price|share price|stock market|exchange rate"
                             r"|scores?|traffic)\b"),
     "Sorry, I can't look things up online here, so I have no news, weather, prices or scores."),
    ("SendDiscordMessage", re.compile(r"^(?:send|post|text|email|ping|notify|message) \S"
                                      r"|^(?:tell|let) (?!me\b|us\b).+\b(?:that|saying|know)\b|\b(?:on|in|to) discord\b"),
     "Sorry, I can't send messages from here."),
]


_ASK = re.compile(r"^(?:(?:can|could|would|will) you (?:please )?|(?:i want|i'd like|i need) you to |go ahead and |"
                  r"please )+")


def _cannot_intent(text: str, offered: frozenset[str]) -> Intent | None:
    text = _ASK.sub("", text)
    for needs, pattern, answer in _CANNOT:
        if (needs is None or needs not in offered) and pattern.search(text):
            return Intent(None, answer=answer)
    return None


# --- a calculation on the previous answer -------------------------------------------------------------------

_RESULT = re.compile(r"\bis (?:about )?(?P<n>-?\d[\d,]*(?:\.\d+)?)(?: [a-z][a-z ]*)?\.?$", re.IGNORECASE)
_LEAD = re.compile(r"^(?:(?:now|and|then|ok|okay|so)[,]?\s+)+")
_REF = re.compile(r"\b(?:that|it|this|the result|the answer|that number|the number)\b")
_ON_OPERATOR = re.compile(r"^(?:plus|minus|times|multiplied by|divided by|over|to the power of|squared)\b")
_SCALE = {"double": "2 times {n}", "triple": "3 times {n}", "halve": "{n} divided by 2", "half of": "{n} divided by 2",
          "square": "{n} squared"}


def _previous_number(previous: str | None) -> str | None:
    """The number the previous answer ended on ("6 times 7 is 42." -> "42"), or None."""
    m = _RESULT.search((previous or "").strip())
    return m.group("n").replace(",", "") if m else None


def _follow_up_intent(text: str, previous: str | None) -> Intent | None:
    number = _previous_number(previous)
    if number is None:
        return None
    text = _LEAD.sub("", text)
    for word, template in _SCALE.items():
        if re.fullmatch(rf"{word} (?:that|it|this|the result|the answer)", text):
            return _arithmetic_intent(template.format(n=number))
    if _ON_OPERATOR.match(text):  # "plus 5", "times 3"
        return _arithmetic_intent(f"{number} {text}")
    if not _REF.search(text):
        return None
    return _arithmetic_intent(_REF.sub(number, text, count=1))


# --- small talk about the assistant ---------------------------------------------------------------------------

_THANKS = re.compile(r"^(?:thanks|thank you|many thanks|cheers)(?: (?:so|very) much| a lot| a bunch)?"
                     r"(?: for (?:your help|the help|helping(?: me)?|that|this|everything|the answer"
                     r"|all (?:the|your) help))?"
                     r"(?:,? (?:that's all|that is all|that's it|bye|goodbye))?$")
_SELF = re.compile(r"^(?:who are you|what are you|what(?:'s| is) your name|what can you do|what are you able to do"
                   r"|what (?:can|do) you (?:help (?:me )?with|know how to do)|how can you help(?: me)?"
                   r"|what can i ask(?: you)?|introduce yourself|about yourself|what do you do)$")
_CAN = [("Calculator", "do arithmetic and unit conversions"), ("GetCurrentTime", "tell you the time and date anywhere"),
        ("SearchWeb", "search the web"), ("SendDiscordMessage", "send messages to Discord")]


def describe_self(tools: frozenset[str]) -> str:
    """What this assistant can do, from the tools it is offered."""
    can = ["answer questions from what I know"] + [what for name, what in _CAN if name in tools]
    listed = can[0] if len(can) == 1 else ", ".join(can[:-1]) + " and " + can[-1]
    return f"I'm Atlas, a voice assistant running on this computer. I can {listed}."  # the name in prompts/v2.0.md


def _small_talk_intent(text: str, tools: frozenset[str]) -> Intent | None:
    if _THANKS.match(text):
        return Intent(None, answer="You're welcome.")
    if _SELF.match(text):
        return Intent(None, answer=describe_self(tools))
    return None


# --- which tools a request may need -----------------------------------------------------------------------

_NUMBER_WORDS = (r"two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|\w+teen|twenty|thirty|forty|fifty|"
                 r"sixty|seventy|eighty|ninety|hundred|thousand|million|billion")
_NEEDS: dict[str, re.Pattern[str]] = {
    "Calculator": re.compile(rf"\b\d|\b(?:{_NUMBER_WORDS}|plus|minus|times|multipl\w*|divid\w*|percent|per cent|"
                             r"square|root|sum|total|average|double|triple|half|twice|add|subtract|calculat\w*)\b"),
    "GetCurrentTime": re.compile(r"\b(?:time|clock|date|o'clock|weekday|what day|which day|day of the week|tomorrow|"
                                 r"yesterday|(?:days?|weeks?|months?|years?|hours?|minutes?) (?:until|till|since|ago|"
                                 r"from now|left)|this (?:week|month|year)|next (?:week|month|year)|last "
                                 r"(?:week|month|year))\b"),
    "SearchWeb": re.compile(r"\b(?:search|look up|look it up|google|online|internet|web|news|headlines|weather|"
                            r"forecast|price|prices|stock|scores?|latest|recent|current|currently|today|traffic)\b"),
    "SendDiscordMessage": re.compile(r"\b(?:send|post|message|tell|let .+ know|notify|discord|channel|ping)\b"),
}


def offered(transcript: str, tools: list[str]) -> list[str]:
    """Those of ``tools`` the request may need (see the module docstring); a tool without a rule is kept."""
    text = normalise(transcript)
    return [name for name in tools if name not in _NEEDS or _NEEDS[name].search(text)]


def match(transcript: str, tools: frozenset[str] | set[str] = frozenset(),
          previous: str | None = None) -> Intent | None:
    """The local intent ``transcript`` is, or None (then the agent answers). ``tools``: the tools the agent's
    model is offered (a web look-up or a message is something the assistant cannot do without its tool);
    ``previous``: the assistant's previous answer in this conversation, if any (for "add 8 to that")."""
    text = normalise(transcript)
    if not text or len(text) > 200:
        return None
    return (_time_intent(text) or _conversion_intent(text) or _arithmetic_intent(text)
            or _follow_up_intent(text, previous) or _small_talk_intent(text, frozenset(tools))
            or _cannot_intent(text, frozenset(tools)))
