"""Typed placeholders for sensitive values, and their restoration in streamed answers.

A ``Placeholders`` table maps each sensitive value to ``<CATEGORY_n>``, numbered per category in
order of first appearance. One table lives as long as the session (stored with it), so a value
gets the same placeholder in every turn: the cloud can follow who is who, and the redacted
history stays a stable prefix for its cache.

``Restorer`` puts the values back into the cloud's answer as it streams, including placeholders
the cloud rewrote (``PERSON_1``, ``[Person_1]``, ...) or made up (``<PERSON_2>`` when only
``<PERSON_1>`` was sent: neutral words instead). A placeholder can be split across chunks
(``"<PER"`` + ``"SON_1>"``): text from where one could still be starting is held back until it
either completes or cannot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tandem.local.chat import Message
from tandem.privacy.types import Finding
from tandem.tools import decode_calls, encode_calls

PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]*)_(\d+)>")
_MAX_PLACEHOLDER = 40  # longest spelling of a placeholder, "&lt; EMAIL_ADDRESS_1234 &gt;"


@dataclass
class Placeholders:
    """value ↔ placeholder, consistent for as long as the table is kept."""

    by_value: dict[str, str] = field(default_factory=dict)

    def placeholder(self, category: str, value: str) -> str:
        known = self.by_value.get(value)
        if known is not None:
            return known
        n = 1 + sum(1 for p in self.by_value.values() if p.startswith(f"<{category}_"))
        made = f"<{category}_{n}>"
        self.by_value[value] = made
        return made

    def values(self) -> dict[str, str]:
        return {p: v for v, p in self.by_value.items()}


@dataclass(frozen=True)
class Redacted:
    messages: list[Message]
    counts: dict[str, int]  # redacted spans per category


def redact_text(text: str, findings: Sequence[Finding], table: Placeholders) -> str:
    """``text`` with each (non-overlapping) finding replaced by its placeholder."""
    out, last = [], 0
    for f in sorted(findings, key=lambda f: f.start):
        out.append(text[last : f.start])
        out.append(table.placeholder(f.category, f.text))
        last = f.end
    out.append(text[last:])
    return "".join(out)


def redact_messages(
    messages: Sequence[Message], findings: Sequence[Sequence[Finding]], table: Placeholders
) -> Redacted:
    counts: dict[str, int] = {}
    redacted = []
    for message, found in zip(messages, findings, strict=True):
        for f in found:
            counts[f.category] = counts.get(f.category, 0) + 1
        out = {**message, "content": redact_text(message["content"], found, table)}
        redacted.append(out)
    for out in redacted:
        if "tool_calls" in out:
            # Arguments the model wrote from values redacted anywhere in the conversation.
            out["tool_calls"] = _redact_calls(out["tool_calls"], table)
    return Redacted(redacted, counts)


def _redact_calls(encoded: str, table: Placeholders) -> str:
    calls = decode_calls(encoded)
    for call in calls:
        function = call.get("function") or {}
        if isinstance(function.get("arguments"), str):  # JSON text: values are escaped there
            function["arguments"] = replace_values(function["arguments"], table, json_string)
    return encode_calls(calls)


def replace_values(
    text: str, table: Placeholders, escape: Callable[[str], str] = lambda v: v
) -> str:
    """``text`` with every value of the table (as ``escape`` writes it) replaced by its
    placeholder, longest value first."""
    for value in sorted(table.by_value, key=len, reverse=True):
        written = escape(value)
        if written in text:
            text = text.replace(written, table.by_value[value])
    return text


def json_string(value: str) -> str:
    """``value`` as it is written inside a JSON string (escapes, no quotes)."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


# What the client sees for a placeholder the cloud made up (a number that was never sent, or
# a category with nothing redacted): neutral words, never placeholder syntax.
NEUTRAL = {
    "PERSON": "that person",
    "EMAIL_ADDRESS": "the email address",
    "PHONE_NUMBER": "the phone number",
    "CREDIT_CARD": "the card number",
    "IBAN_CODE": "the IBAN",
    "US_SSN": "the social security number",
    "IP_ADDRESS": "the IP address",
    "DATE_TIME": "the date",
    "LOCATION": "the address",
    "MEDICAL": "the health detail",
    "UK_NHS": "the NHS number",
    "PASSPORT": "the passport number",
    "ACCOUNT_NUMBER": "the account number",
    "US_PASSPORT": "the passport number",
    "CRYPTO": "the wallet address",
}
REDACTED = "[redacted]"
# Other names the cloud gives a category when it rewrites a placeholder ("<NAME_1>").
_ALIASES = {
    "NAME": "PERSON",
    "PERSON_NAME": "PERSON",
    "EMAIL": "EMAIL_ADDRESS",
    "PHONE": "PHONE_NUMBER",
    "ADDRESS": "LOCATION",
    "DATE": "DATE_TIME",
    "CARD": "CREDIT_CARD",
    "CARD_NUMBER": "CREDIT_CARD",
    "IBAN": "IBAN_CODE",
    "SSN": "US_SSN",
    "IP": "IP_ADDRESS",
}
# The spellings of a placeholder that the cloud writes back: the one sent (<PERSON_1>), and
# rewritten ones: <Person_1>, < PERSON_1 >, [PERSON_1], {PERSON_1}, <PERSON 1>, <PERSON-1>,
# &lt;PERSON_1&gt;, and PERSON_1 bare (in capitals only, as a word of its own: "person_1" in
# code is left alone). Brackets and separators need not match in kind.
_OPEN = r"(?:<|\[|\{|&lt;)"
_CLOSE = r"(?:>|\]|\}|&gt;)"
_BRACKETED = re.compile(
    rf"{_OPEN}[ \t]?(?P<bc>[A-Za-z][A-Za-z_]*?)[_ \-](?P<bn>\d{{1,4}})[ \t]?{_CLOSE}"
)
_BARE = re.compile(r"(?<![A-Za-z0-9_])(?P<c>[A-Z][A-Z_]*?)_(?P<n>\d{1,4})(?![A-Za-z0-9_])")
_ANY = re.compile(f"{_BRACKETED.pattern}|{_BARE.pattern}")


class Restorer:
    """Streams text with placeholders replaced by their values.

    A placeholder the cloud echoes as sent is restored; one it rewrote (another case, other
    brackets, spaces, no brackets at all, HTML-escaped) is restored when its category and
    number name a value of the table. One that names no value (``<PERSON_2>`` when only
    ``<PERSON_1>`` was sent: the cloud made someone up, or renumbered) cannot be mapped back
    without guessing, and is replaced by neutral words ("that person", "the email address";
    ``[redacted]`` for a category without its own words). The client never sees placeholder
    syntax for a category the detector knows; other text in brackets (``<div>``, ``[STEP_1]``)
    passes unchanged.

    Streaming: text from a point where a placeholder could still be starting (``<PER``,
    ``&l``, ``PERSON_`` at the end of a chunk) is held back until it either completes or
    cannot, and a bare placeholder at the very end is held too (``PERSON_1`` could become
    ``PERSON_12``); ``flush`` settles the rest.
    """

    def __init__(self, table: Placeholders, escape: Callable[[str], str] | None = None):
        self.table = table
        self._values = table.values()
        self._escape = escape  # how a value is written where it goes (in JSON: json_string)
        self._held = ""
        self._last = ""  # the last character given out: a bare placeholder needs a boundary
        known = {*NEUTRAL, *(p[1:].rsplit("_", 1)[0] for p in self._values)}
        self._categories = frozenset(known)
        self._names = frozenset(known | set(_ALIASES))
        self._prefixes = frozenset(n[:i] for n in self._names for i in range(1, len(n) + 1))

    def feed(self, text: str) -> str:
        data = self._held + text
        cut = self._hold_from(data)
        out, self._held = data[:cut], data[cut:]
        return self._give(out)

    def flush(self) -> str:
        data, self._held = self._held, ""
        return self._give(data)

    def _give(self, text: str) -> str:
        if not text:
            return ""
        restored = self._restore(text)
        self._last = text[-1]
        return restored

    def _category(self, name: str, bracketed: bool) -> str | None:
        upper = name.upper()
        if upper in self._categories:
            return upper
        return _ALIASES.get(upper) if bracketed else None

    def _value(self, category: str, number: str) -> str:
        value = self._values.get(f"<{category}_{int(number)}>")
        if value is not None:
            return value if self._escape is None else self._escape(value)
        return NEUTRAL.get(category, REDACTED)

    def _restore(self, text: str) -> str:
        if not any(c in text for c in "<[{&_"):
            return text
        skip = len(self._last)

        def replace(m: re.Match[str]) -> str:
            if m.start() < skip:
                return m.group(0)  # the character before ``text``: already given out
            if m.group("bc") is not None:
                category = self._category(m.group("bc"), bracketed=True)
                number = m.group("bn")
            else:
                category = self._category(m.group("c"), bracketed=False)
                number = m.group("n")
            return m.group(0) if category is None else self._value(category, number)

        # One pass over the text as the cloud wrote it: whether a bare placeholder stands as a
        # word of its own is decided on the cloud's characters around it, never on a value
        # restored next to it. The character given out before ``text`` counts for that too.
        return _ANY.sub(replace, self._last + text)[skip:]

    def _hold_from(self, data: str) -> int:
        """Where the text that could still become (or extend) a placeholder starts."""
        hold = len(data)
        window = data[-_MAX_PLACEHOLDER:]
        base = len(data) - len(window)
        for i, ch in enumerate(window):
            if ch in "<[{&" and self._could_open(window[i:]):
                return base + i
            if (
                ch.isupper()
                and (
                    (base + i == 0 and not _word_char(self._last))
                    or (base + i > 0 and not _word_char(data[base + i - 1]))
                )
                and self._could_be_bare(window[i:])
            ):
                return base + i
        return hold

    def _could_open(self, tail: str) -> bool:
        """Whether ``tail`` (from a bracket to the end) is the start of a bracketed one."""
        m = _PARTIAL_BRACKETED.fullmatch(tail)
        if m is None:
            return False
        name = (m.group("name") or "").upper()
        return not name or name in self._prefixes or name.rstrip("_") in self._names

    def _could_be_bare(self, tail: str) -> bool:
        m = _PARTIAL_BARE.fullmatch(tail)
        if m is None:
            return False
        name = m.group("name")
        if m.group("n") is not None:  # "PERSON_1" at the very end: a digit may follow
            return name.endswith("_") and name[:-1] in self._categories
        return name in self._prefixes or name.rstrip("_") in self._categories


def _word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


# The start of a bracketed placeholder, up to the end of the text: "&l", "<", "< PER",
# "[Person_1", "<EMAIL_ADDRESS_1 ", "&lt;PERSON_1&g".
_PARTIAL_BRACKETED = re.compile(
    r"(?:&lt;|&lt|&l|&|<|\[|\{)(?:[ \t]?(?:(?P<name>[A-Za-z][A-Za-z_]*)"
    r"(?:[ \-]?\d{0,4}[ \t]?(?:&|&g|&gt)?)?)?)?"
)
_PARTIAL_BARE = re.compile(r"(?P<name>[A-Z][A-Z_]*)(?P<n>\d{1,4})?")
