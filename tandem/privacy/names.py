"""Person-name candidates from a first-name gazetteer and the shape of names in text.

``gender-guesser``'s name dictionary (about 48,000 first names from many countries) gives the
candidates: a known first name, alone or followed by surname words ("Amara Okafor", "Pieter van
Dijk"); a title followed by capitalised words ("Dr. Okafor"); capitalised words after a cue,
known or not ("my daughter Priya", "Policyholder: Kwame Mensah"); capitalised words that English
rarely uses (``wordfreq``). The default detector puts these to spaCy's named-entity model
(``ner.py``), which knows a company or a country from a person; ``PersonNameRecognizer`` is the
heuristic-only recognizer of earlier releases, kept so that the two can be measured side by
side (``Detector(ner=False)``).
"""

from __future__ import annotations

import functools
import threading
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
AMBIGUOUS = _AMBIGUOUS
_TITLES = r"(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Professor|Sir|Dame|Rev|Capt|Sgt)\.?"
# Words after which capitalised words are a name, known or not ("Policyholder: Kwame Mensah").
_CUES = (
    r"(?:my|our|his|her|their)\s+(?:(?:best|dear|late|new|old|eldest|youngest|little|older|"
    r"younger)\s+)?(?:name\s+is|son|daughter|twins?|kids?|children|wife|husband|"
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
_SP = r"[ \t]+"  # names do not run across lines
_WORD = regex.compile(_CAP)
_SURNAME = rf"(?:{_PARTICLE}{_SP})?{_CAP}"
_TITLE_NAME = regex.compile(rf"\b{_TITLES}{_SP}((?:{_CAP}{_SP}){{0,2}}{_CAP})")
_CUE_NAME = regex.compile(rf"(?:\b|^)(?i:{_CUES})[ \t]*,?\s+({_CAP}(?:{_SP}{_SURNAME}){{0,2}})")
_NAME_RUN = regex.compile(rf"\b({_CAP})((?:{_SP}{_SURNAME}){{0,2}})")
# Romanised given names such as "Min-jun" or "Seo-yeon": no English word has that shape.
_HYPHENATED = regex.compile(r"\p{Lu}\p{Ll}{1,5}-\p{Ll}{2,5}")


_FIRST_NAMES: frozenset[str] | None = None
_FIRST_NAMES_LOCK = threading.Lock()


def first_names() -> frozenset[str]:
    """Lower-cased first names from gender-guesser's dictionary, minus common words.

    Read once per process, whichever thread asks first (the warm-up, or a scan on a worker
    thread); the other waits for that read rather than doing its own."""
    global _FIRST_NAMES
    names = _FIRST_NAMES
    if names is None:
        with _FIRST_NAMES_LOCK:
            names = _FIRST_NAMES
            if names is None:
                names = _FIRST_NAMES = _read_first_names()
    return names


def _read_first_names() -> frozenset[str]:
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


# Zipf frequencies (wordfreq, log10 of uses per billion words) below which a capitalised word
# is taken for a name: "Ndlovu" 1.8, "Adebayo" 2.0, "Hye-jin" 3.2; "Tokyo" 4.3, "Theory" 4.9.
RARE_IN_RUN = 3.2
RARE_ALONE = 2.5


@functools.lru_cache(maxsize=65536)
def is_rare(word: str, below: float) -> bool:
    from wordfreq import zipf_frequency

    return bool(zipf_frequency(word.lower(), "en") < below)


def warm_up() -> None:
    """Load the name list and wordfreq's English list now (about 0.3 s) rather than on the
    first request."""
    first_names()
    is_rare("warm", RARE_ALONE)


def _has_given_name(rest: str, names: frozenset[str]) -> bool:
    return any(w.lower() in names and w.lower() not in _AMBIGUOUS for w in _WORD.findall(rest))


def _starts_sentence(text: str, m: regex.Match[str]) -> bool:
    before = text[: m.start(1)].rstrip(" \t")
    return not before or before[-1] in '.!?\n"“'


# How each candidate was found, with its score: a title before it, a known first name with a
# surname, capitalised words after a cue, capitalised words led by a rare word, a known first
# name alone, a rare capitalised word alone.
TITLE, KNOWN_RUN, CUE, RARE_RUN, KNOWN_ALONE, RARE_WORD, MENTION, INITIAL = (
    "title",
    "known_run",
    "cue",
    "rare_run",
    "known_alone",
    "rare_alone",
    "mention",
    "initial",
)
SCORES = {
    TITLE: 0.85,
    KNOWN_RUN: 0.7,
    CUE: 0.65,
    RARE_RUN: 0.55,
    KNOWN_ALONE: 0.5,
    RARE_WORD: 0.45,
    MENTION: 0.5,
    INITIAL: 0.5,
}


def candidates(text: str, initial_names: bool = False) -> dict[tuple[int, int], str]:
    """Name-shaped spans from the list, the titles, the cues and word rarity, with how each
    was found (the first rule to find a span names it; the title rule comes first). With
    ``initial_names``, a known first name alone at the start of a sentence is a candidate
    too (``INITIAL``: capitals say nothing there, so only the model can tell)."""
    names = first_names()
    found: dict[tuple[int, int], str] = {}
    for m in _TITLE_NAME.finditer(text):
        found[m.span(1)] = TITLE
    for m in _NAME_RUN.finditer(text, overlapped=True):
        first = m.group(1)
        known = first.lower() in names and len(first) > 2
        initial = _starts_sentence(text, m)
        if known and m.group(2):  # with a surname it is surely a name
            found.setdefault((m.start(1), m.end(2)), KNOWN_RUN)
        elif known and first.lower() not in _AMBIGUOUS and not initial:
            # A known first name alone, capitalised where a word would not be: likely.
            found.setdefault(m.span(1), KNOWN_ALONE)
        elif m.group(2) and (
            _HYPHENATED.fullmatch(first)
            or is_rare(first, RARE_IN_RUN)
            or _has_given_name(m.group(2), names)  # family name first: "Nguyen Thi Lan"
        ):
            # Capitalised words led by one English hardly uses: a name the list lacks.
            found.setdefault((m.start(1), m.end(2)), RARE_RUN)
        elif not m.group(2) and not initial and is_rare(first, RARE_ALONE):
            found.setdefault(m.span(1), RARE_WORD)
        elif initial_names and known and not m.group(2) and first.lower() not in _AMBIGUOUS:
            found.setdefault(m.span(1), INITIAL)
    for m in _CUE_NAME.finditer(text):
        found.setdefault(m.span(1), CUE)
    return found


def cued(text: str) -> set[tuple[int, int]]:
    """The spans that a title or a cue makes names ("Dr. Okafor", "my daughter Priya")."""
    return {m.span(1) for m in _TITLE_NAME.finditer(text)} | {
        m.span(1) for m in _CUE_NAME.finditer(text)
    }


def mentions(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Every other mention of a part of a name in ``spans`` ("Aisha Bello ... Aisha said")."""
    parts = {p for (s, e) in spans for p in _WORD.findall(text[s:e]) if len(p) > 2}
    if not parts:
        return []
    mention = regex.compile(r"\b(?:" + "|".join(map(regex.escape, parts)) + r")\b")
    return [
        m.span() for m in mention.finditer(text) if not any(s <= m.start() < e for (s, e) in spans)
    ]


class PersonNameRecognizer(EntityRecognizer):
    """PERSON spans from the gazetteer and the shapes above (scores: title 0.85, known first
    name with surname 0.7, after a cue 0.65, known first name alone 0.5).

    The heuristic-only detector of earlier releases (``Detector(ner=False)``); the default one
    puts these candidates to the named-entity model first (``ner.py``)."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["PERSON"], name="PersonNameRecognizer")

    def load(self) -> None:
        pass  # the lists load on first use, or in warm_up()

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        found = {span: SCORES[kind] for span, kind in candidates(text).items()}
        for span in mentions(text, list(found)):
            found[span] = SCORES[MENTION]
        return [
            RecognizerResult("PERSON", start, end, score) for (start, end), score in found.items()
        ]
