"""The privacy vocabulary shared by the request path and the detectors: the modes a request
may ask for and what a scan finds. Light on purpose: the request types import it without
loading Presidio or spaCy (``tandem/privacy/detect.py`` does)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class PrivacyMode(StrEnum):
    LOCAL_ONLY = "local_only"
    REDACT = "redact"
    ALLOW = "allow"


@dataclass(frozen=True)
class Finding:
    category: str
    start: int
    end: int
    text: str
    score: float
    # A quasi-identifier (a given name alone, a date tied to no one): redacted only next to
    # other personal data. Only the NER configuration marks findings weak.
    weak: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "category": self.category,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "score": round(self.score, 3),
        }
        if self.weak:
            out["weak"] = True
        return out
