"""Typed placeholders for sensitive values, and their restoration in streamed answers.

A ``Placeholders`` table maps each sensitive value to ``<CATEGORY_n>``, numbered per category in
order of first appearance. One table lives as long as the session (stored with it), so a value
gets the same placeholder in every turn: the cloud can follow who is who, and the redacted
history stays a stable prefix for its cache.

``Restorer`` puts the values back into the cloud's answer as it streams. A placeholder can be
split across chunks (``"<PER"`` + ``"SON_1>"``): text from a ``<`` that could still become a
placeholder is held back until it either completes or cannot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from tandem.local.chat import Message
from tandem.privacy.detect import Finding

PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]*)_(\d+)>")
_MAX_PLACEHOLDER = 32  # longest "<CATEGORY_n>" this module makes, with room to spare
_PARTIAL = re.compile(r"<[A-Z_]*\d*$")


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
        content = redact_text(message["content"], found, table)
        redacted.append({"role": message["role"], "content": content})
    return Redacted(redacted, counts)


class Restorer:
    """Streams text with known placeholders replaced by their values."""

    def __init__(self, table: Placeholders):
        self._values = table.values()
        self._held = ""

    def feed(self, text: str) -> str:
        data = self._held + text
        cut = data.rfind("<")
        if cut >= 0 and len(data) - cut <= _MAX_PLACEHOLDER and _PARTIAL.match(data, cut):
            data, self._held = data[:cut], data[cut:]
        else:
            self._held = ""
        return self._restore(data)

    def flush(self) -> str:
        data, self._held = self._held, ""
        return self._restore(data)

    def _restore(self, text: str) -> str:
        if "<" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._values.get(m.group(0), m.group(0)), text)
