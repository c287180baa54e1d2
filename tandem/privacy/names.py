"""Person names without an NER model: a first-name gazetteer plus the shape of names in text.

No NER model can be downloaded at run time, and spaCy's are not on PyPI. What does ship on PyPI
is ``gender-guesser``'s name dictionary (about 48,000 first names from many countries), so a
name is found as: a known first name, alone or followed by surname words ("Amara Okafor",
"Pieter van Dijk"); a title followed by capitalised words ("Dr. Okafor"); or capitalised words
after a cue, known or not ("my daughter Priya", "Policyholder: Kwame Mensah"). Presidio's
recognizer interface carries it.
"""

from __future__ import annotations

import functools
from importlib import resources

import regex
from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts


def _words(text: str) -> list[str]:
    return text.split()


# Words in the name dictionary that are (nearly) never names in English text.
_NOT_NAMES = frozenset(
    _words(
        """
        add al amazon an apple april august avenue bank ben best big bin card christmas da
        de dear december del di doctor dr du east easter el else even ever february friday
        god hello hi jaguar jan january java july june kind la lane le lord madam march may
        monday moon more mr mrs ms new north november nurse october old patient please
        python regards road saturday sept september sir so south street sun sunday thank
        thanks thursday tuesday van von wednesday west
        """
    )
)
# Names that are also common words: a name only with a surname, a title or a cue.
_AMBIGUOUS = frozenset(
    _words(
        """
        angel art autumn bill black brown chase crystal daisy dawn dean eve faith golden
        grace grant green guy heather holly honor hope hunter iris ivy jasmine joy justice
        king lily little long major mark miles page prince princess queen rain ray rich
        river rock rose ruby sky spring star stone storm summer sunny victory violet white
        will winter young
        """
    )
)
_TITLES = r"(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Professor|Sir|Dame|Rev|Capt|Sgt)\.?"
# Words after which capitalised words are a name, known or not ("Policyholder: Kwame Mensah").
_CUES = (
    r"(?:my|our|his|her|their)\s+(?:name\s+is|son|daughter|twins?|kids?|children|wife|husband|"
    r"partner|mother|father|mom|mum|dad|parents|brother|sister|friend|colleague|boss|manager|"
    r"patient|client|child|grandmother|grandfather|grandson|granddaughter|neighbou?r|doctor|"
    r"nurse|tenant|landlord|fiancée?|cousin|uncle|aunt|nephew|niece)"
    r"|name\s+is|I'm|I\s+am|Dear|Hi|Hello"
    r"|(?:Name|Patient|Policyholder|Beneficiary|Recipient|Payee|Account\s+holder|Applicant|"
    r"Employee|Guest|Passenger|Tenant|Client|Customer|Cardholder|Insured|Member|Contact|"
    r"Signed|From|To|Cc|Attn)\s*:"
)
_PARTICLE = r"(?:van|von|de|da|del|der|den|di|du|le|la|bin|ibn|al|el|dos|das)"
_CAP = r"\p{Lu}(?:\p{Ll}+|['’]\p{Lu}\p{Ll}+)(?:-\p{L}\p{Ll}+)?"  # Ana, O'Brien, Hye-jin
_SURNAME = rf"(?:{_PARTICLE}\s+)?{_CAP}"
_TITLE_NAME = regex.compile(rf"\b{_TITLES}\s+((?:{_CAP}\s+){{0,2}}{_CAP})")
_CUE_NAME = regex.compile(rf"(?:\b|^)(?i:{_CUES})\s*,?\s+({_CAP}(?:\s+{_SURNAME}){{0,2}})")
_NAME_RUN = regex.compile(rf"\b({_CAP})((?:\s+{_SURNAME}){{0,2}})")


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
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(names - _NOT_NAMES - STOP_WORDS)


def _starts_sentence(text: str, m: regex.Match[str]) -> bool:
    before = text[: m.start(1)].rstrip(" \t")
    return not before or before[-1] in '.!?\n"“(['


class PersonNameRecognizer(EntityRecognizer):
    """PERSON spans from the gazetteer and the shapes above (scores: title 0.85, known first
    name with surname 0.7, after a cue 0.65, known first name alone 0.5)."""

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
            first = m.group(1)
            known = first.lower() in names and len(first) > 2
            if known and m.group(2):  # with a surname it is surely a name
                found.setdefault((m.start(1), m.end(2)), 0.7)
            elif known and first.lower() not in _AMBIGUOUS and not _starts_sentence(text, m):
                # A known first name alone, capitalised where a word would not be: likely.
                found.setdefault(m.span(1), 0.5)
        for m in _CUE_NAME.finditer(text):
            found.setdefault(m.span(1), 0.65)
        return [
            RecognizerResult("PERSON", start, end, score) for (start, end), score in found.items()
        ]
