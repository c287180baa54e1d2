"""Person names without an NER model: a first-name gazetteer plus the shape of names in text.

No NER model can be downloaded at run time, and spaCy's are not on PyPI. What does ship on PyPI
is ``gender-guesser``'s name dictionary (about 48,000 first names from many countries), so a
name is found as: a known first name followed by one or two capitalised words ("Amara Okafor"),
a title followed by capitalised words ("Dr. Okafor"), or a known first name right after a cue
("my daughter Priya", "I'm Carlos", "Dear Maria"). Presidio's recognizer interface carries it.
"""

from __future__ import annotations

import functools
from importlib import resources

import regex
from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

# Words that are first names in the dictionary but mostly something else in English text.
_NOT_NAMES = {
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "dear",
    "hello",
    "hi",
    "thanks",
    "thank",
    "please",
    "best",
    "kind",
    "regards",
    "street",
    "road",
    "avenue",
    "lane",
    "bank",
    "card",
    "doctor",
    "nurse",
    "patient",
    "summer",
    "winter",
    "spring",
    "autumn",
    "christmas",
    "easter",
    "god",
    "lord",
    "king",
    "queen",
    "prince",
    "princess",
    "sir",
    "madam",
    "north",
    "south",
    "east",
    "west",
    "new",
    "old",
    "young",
    "little",
    "big",
    "long",
    "page",
    "bill",
    "will",
    "can",
    "van",
    "von",
    "le",
    "la",
    "de",
    "del",
    "da",
    "di",
    "du",
    "al",
    "el",
    "ben",
    "bin",
    "amazon",
    "jaguar",
    "apple",
    "python",
    "java",
    "ruby",
    "crystal",
    "angel",
    "faith",
    "hope",
    "joy",
    "grace",
    "star",
    "sky",
    "rain",
    "river",
    "stone",
    "rock",
    "golden",
    "black",
    "white",
    "green",
    "brown",
}
_TITLES = r"(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Professor|Sir|Dame|Rev|Capt|Sgt)\.?"
_CUES = (
    r"(?:my|our|his|her|their)\s+(?:name\s+is|son|daughter|wife|husband|partner|mother|"
    r"father|mom|mum|dad|brother|sister|friend|colleague|boss|manager|patient|client|child|"
    r"grandmother|grandfather|neighbou?r|doctor|nurse|tenant|landlord)"
    r"|name\s+is|named|called|I'm|I\s+am|this\s+is|Dear|Hi|Hello|Hey|to|from|with|for|by|cc|"
    r"Regards,|Thanks,|Sincerely,|patient|client|employee|applicant|signed"
)
_CAP = r"\p{Lu}(?:\p{Ll}+|['’]\p{Lu}\p{Ll}+)(?:-\p{Lu}\p{Ll}+)?"  # Ana, O'Brien, Jean-Luc
_WORD = regex.compile(_CAP)
_TITLE_NAME = regex.compile(rf"\b{_TITLES}\s+((?:{_CAP}\s+){{0,2}}{_CAP})")
_CUE_NAME = regex.compile(rf"(?:\b|^)(?:{_CUES})\s+({_CAP})", regex.IGNORECASE)
_NAME_RUN = regex.compile(rf"\b({_CAP})((?:\s+(?:{_CAP}|\p{{Lu}}\.)){{1,2}})")


@functools.cache
def first_names() -> frozenset[str]:
    """Lower-cased first names from gender-guesser's dictionary, minus common words."""
    data = resources.files("gender_guesser") / "data" / "nam_dict.txt"
    names = set()
    with data.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or line.startswith("="):
                continue
            name = line[3:29].strip()
            if name and "+" not in name and " " not in name and len(name) > 1:
                names.add(name.lower())
    return frozenset(names - _NOT_NAMES)


class PersonNameRecognizer(EntityRecognizer):
    """PERSON spans from the gazetteer and the shapes above (scores: title 0.85, name run 0.7,
    cue + known first name 0.6)."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["PERSON"], name="PersonNameRecognizer")

    def load(self) -> None:
        first_names()

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        names = first_names()
        found: dict[tuple[int, int], float] = {}
        for m in _TITLE_NAME.finditer(text):
            found[m.span(1)] = 0.85
        for m in _NAME_RUN.finditer(text, overlapped=True):
            if m.group(1).lower() in names:
                found.setdefault((m.start(1), m.end(2)), 0.7)
        for m in _CUE_NAME.finditer(text):
            if m.group(1).lower() in names and _WORD.fullmatch(m.group(1)):
                found.setdefault(m.span(1), 0.6)
        return [
            RecognizerResult("PERSON", start, end, score) for (start, end), score in found.items()
        ]
