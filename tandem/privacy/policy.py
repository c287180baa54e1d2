"""The privacy policy at the cloud boundary: what may leave the device, and in what form.

Modes, per request and per session:
- ``local_only``: nothing goes to the cloud; the gateway errors rather than escalate.
- ``redact`` (default): sensitive values are replaced by placeholders before the cloud sees the
  request, and restored in its answer; content in a keep-local category (health records, by
  default) is not sent at all: the turn is answered locally.
- ``allow``: sent as is.

A session remembers the strictest mode it was ever used with: what was said under
``local_only`` must not reach the cloud later as part of the history.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tandem.local.chat import Message
from tandem.privacy.detect import DEFAULT_CATEGORIES, Detector, supported
from tandem.privacy.redact import Placeholders, Restorer, json_string, redact_messages
from tandem.privacy.types import Finding, PrivacyMode
from tandem.tools import call_arguments

_STRICTNESS = {PrivacyMode.ALLOW: 0, PrivacyMode.REDACT: 1, PrivacyMode.LOCAL_ONLY: 2}

Decision = Literal["send", "redact", "keep_local"]


def strictest(*modes: PrivacyMode | str | None) -> PrivacyMode:
    present = [PrivacyMode(m) for m in modes if m is not None]
    return max(present, key=_STRICTNESS.__getitem__) if present else PrivacyMode.REDACT


@dataclass(frozen=True)
class Assessment:
    findings: list[list[Finding]]  # per message
    keep_local: tuple[str, ...]  # categories found that may not leave the device
    in_calls: list[Finding] = field(default_factory=list)  # in tool-call arguments

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for found in [*self.findings, self.in_calls]:
            for f in found:
                counts[f.category] = counts.get(f.category, 0) + 1
        return counts

    @property
    def decision(self) -> Decision:
        if self.keep_local:
            return "keep_local"
        return "redact" if any(self.findings) or self.in_calls else "send"


@dataclass
class CloudShield:
    """What the cloud receives for one call, and how its answer is restored."""

    messages: list[Message]
    mode: PrivacyMode
    counts: dict[str, int] = field(default_factory=dict)
    restorer: Restorer | None = None

    def restore(self, text: str) -> str:
        return text if self.restorer is None else self.restorer.feed(text)

    def flush(self) -> str:
        return "" if self.restorer is None else self.restorer.flush()

    def argument_restorer(self) -> Restorer:
        """A restorer for a tool call's arguments (JSON text: values are escaped there)."""
        table = self.restorer.table if self.restorer is not None else Placeholders()
        return Restorer(table, json_string)


class PrivacyGuard:
    """Detection plus the policy's keep-local categories.

    Weak findings (a given name alone, a date tied to no one) are redacted when the
    conversation holds other personal data: a strong finding in any of its messages, or values
    the session's table already redacted in earlier turns.

    Safe to call from worker threads concurrently (the gateway runs ``shield`` off the event
    loop): the detector serializes its analyzer calls, and placeholders are taken from a
    session's table under a lock, so two scans that share a table cannot number one value
    twice.

    ``ner=False`` selects the heuristic-only detector of earlier releases (for measurement).
    """

    def __init__(
        self,
        categories: Sequence[str] = DEFAULT_CATEGORIES,
        keep_local: Sequence[str] = ("MEDICAL",),
        threshold: float = 0.35,
        *,
        ner: bool = True,
        public_figures: bool = True,
    ):
        self.detector = Detector(
            tuple(categories), threshold, ner=ner, public_figures=public_figures
        )
        Detector(tuple(keep_local), ner=False)  # the same check of the names
        self.keep_local = tuple(keep_local)
        self._tables = threading.Lock()

    def assess(self, messages: Sequence[Message], table: Placeholders | None = None) -> Assessment:
        # The arguments of the history's tool calls are scanned as texts of their own.
        texts = [m["content"] for m in messages] + call_arguments(messages)
        scanned = [self.detector.scan(t) for t in texts]
        support = bool(table is not None and table.by_value) or any(
            not f.weak for fs in scanned for f in fs
        )
        if support:
            # Given names alone count now: the model decides those it had not yet seen.
            scanned = [self.detector.settled(t) for t in texts]
        findings = [supported(fs, support) for fs in scanned]
        found = {f.category for fs in findings for f in fs}
        keep = tuple(c for c in self.keep_local if c in found)
        n = len(messages)
        return Assessment(findings[:n], keep, [f for fs in findings[n:] for f in fs])

    def shield(
        self, messages: Sequence[Message], mode: PrivacyMode, table: Placeholders | None
    ) -> CloudShield | None:
        """The cloud-bound form of ``messages``; None when they must stay on the device."""
        if mode == PrivacyMode.LOCAL_ONLY:
            return None
        if mode == PrivacyMode.ALLOW:
            return CloudShield(list(messages), mode)
        assessment = self.assess(messages, table)
        if assessment.keep_local:
            return None
        table = table if table is not None else Placeholders()
        with self._tables:
            for f in assessment.in_calls:  # redact_messages replaces the table's values there
                table.placeholder(f.category, f.text)
            redacted = redact_messages(messages, assessment.findings, table)
            restorer = Restorer(table)
        return CloudShield(redacted.messages, mode, redacted.counts, restorer)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scan_line(guard: PrivacyGuard, line: str) -> dict[str, Any]:
    """``tandem privacy scan`` for one input line: plain text, or JSON with a ``text`` field."""
    text, record_id = line.rstrip("\n"), None
    if text.lstrip().startswith("{"):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            text, record_id = record["text"], record.get("id")
    message = [{"role": "user", "content": text}]
    assessment = guard.assess(message)
    redacted = redact_messages(message, assessment.findings, Placeholders()).messages[0]
    out: dict[str, Any] = {} if record_id is None else {"id": record_id}
    out.update(
        decision=assessment.decision,
        findings=[f.as_dict() for f in assessment.findings[0]],
        redacted=redacted["content"],
    )
    if assessment.keep_local:
        out["keep_local_because"] = list(assessment.keep_local)
    return out
