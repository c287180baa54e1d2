"""Identifiers next to the words that name them: redacted whatever their checksum says.

Presidio's recognizers check a number before they call it a card, an IBAN or an SSN (Luhn,
mod-97, the SSA's rules), which keeps order numbers and versions out. They also reject the
well-known sample and invalid numbers (078-05-1120, 123-45-6789, an IBAN with a typo), and a
user who writes "my SSN is 123-45-6789" means it as one: such a value must not leave the
device either. So a value *shaped* like one of these identifiers, within a few words of its cue
("social security number", "SSN", "card number", "credit card", "IBAN", "passport", "account
number", ...) is redacted whether or not it passes: the detector fails closed where the text
says what the number is.

The cue may come before the value ("SSN: 078-05-1120", "passport no. X1234567") or right after
it ("4111 1111 1111 1112 is my card number"); within one line, at most ``BEFORE`` characters
before or ``AFTER`` after, with no other number in between.
"""

from __future__ import annotations

import re

from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

BEFORE = 40
AFTER = 30
SCORE = 0.9

_SEP = r"[ \-.]?"
# category → (value shape, cue words); shapes are anchored on word boundaries.
_RULES: dict[str, tuple[str, str]] = {
    "US_SSN": (
        rf"\b\d{{3}}{_SEP}\d{{2}}{_SEP}\d{{4}}\b",
        r"social[\s-]+security(?:\s+(?:number|no\.?|num(?:ber)?|#))?|ssns?|ss#|soc\.?\s*sec\.?"
        r"|taxpayer\s+id(?:entification)?(?:\s+number)?|\bitin\b|\btin\b",
    ),
    "CREDIT_CARD": (
        r"\b\d{4}(?:[ \-]?\d{2,6}){2,4}\b",
        r"(?:credit|debit|bank|payment|visa|master\s?card|amex|american\s+express|discover"
        r"|maestro)\s*card(?:\s*(?:number|no\.?|num|#))?|card\s*(?:number|no\.?|num|#)"
        r"|\bcc\s*(?:number|no\.?|#)?|\bpan\b|visa|master\s?card|amex|american\s+express"
        r"|card\s+ending",
    ),
    "IBAN_CODE": (
        r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){10,30}\b",
        r"iban|international\s+bank\s+account(?:\s+number)?|bank\s+account|account\s+number",
    ),
    "PASSPORT": (
        r"\b(?=[A-Z0-9]*\d)(?=(?:[A-Z]*\d){5})[A-Z0-9]{6,9}\b",
        r"passport(?:\s*(?:number|no\.?|num|#|id))?|travel\s+document(?:\s+number)?",
    ),
    "ACCOUNT_NUMBER": (
        r"\b\d(?:[ \-]?\d){5,19}\b",
        r"(?:bank|checking|current|savings|brokerage|investment|routing|account|acct|a/c)"
        r"\s*(?:number|no\.?|num|#)|bank\s+account|checking\s+account|savings\s+account"
        r"|\bacct\b|\ba/c\b|routing\s+(?:transit\s+)?number|\baba\b|sort\s+code"
        r"|account",
    ),
}
_SHAPES = {c: re.compile(shape) for c, (shape, _) in _RULES.items()}
# How many digits a value of each kind has (a card 12 to 19, an SSN 9, ...).
_DIGITS = {
    "US_SSN": (9, 9),
    "CREDIT_CARD": (12, 19),
    "IBAN_CODE": (4, 34),
    "PASSPORT": (5, 9),
    "ACCOUNT_NUMBER": (6, 20),
}
# A cue is a whole word or phrase; the gap between it and the value holds no other digits
# (so "account 2: card 4111 ..." ties the card to "card", not to "account").
_CUES = {c: re.compile(rf"(?i)(?<![\w])(?:{cue})(?![\w])") for c, (_, cue) in _RULES.items()}
# Between a cue and its value: no digits, no line break, no end of sentence ("." is allowed
# before the value, for "no." and "acct.").
_GAP_BEFORE = re.compile(r"[^\d\n!?;]*")
_GAP_AFTER = re.compile(r"[^\d\n.!?;]*")


class CuedIdentifierRecognizer(EntityRecognizer):
    """Identifier-shaped values next to their cue words (see the module's docstring)."""

    def __init__(self) -> None:
        super().__init__(supported_entities=list(_RULES), name="CuedIdentifierRecognizer")

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        return [
            RecognizerResult(category, s, e, SCORE)
            for category, s, e in cued_identifiers(text)
            if category in entities
        ]


def cued_identifiers(text: str) -> list[tuple[str, int, int]]:
    """(category, start, end) of each identifier-shaped value with its cue next to it."""
    found: list[tuple[str, int, int]] = []
    # In this order: a value cued as a card is not also an account number.
    for category, shape in _SHAPES.items():
        cue = _CUES[category]
        low, high = _DIGITS[category]
        for m in shape.finditer(text):
            if not low <= sum(c.isdigit() for c in m.group()) <= high:
                continue
            if any(s < m.end() and m.start() < e for _, s, e in found):
                continue
            if _cued(text, m.start(), m.end(), cue):
                found.append((category, m.start(), m.end()))
    return found


def _cued(text: str, start: int, end: int, cue: re.Pattern[str]) -> bool:
    before = text[max(0, start - BEFORE) : start]
    for c in cue.finditer(before):
        if _GAP_BEFORE.fullmatch(before[c.end() :]):
            return True
    after = text[end : end + AFTER]
    following = cue.search(after)
    return following is not None and _GAP_AFTER.fullmatch(after[: following.start()]) is not None
