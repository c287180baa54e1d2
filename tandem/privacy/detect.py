"""Finding sensitive spans in text: Presidio's recognizers, spaCy's named-entity model, offline.

Presidio's pattern recognizers bring the checksums (Luhn for cards, mod-97 for IBANs, the SSN
rules, libphonenumber for phones). They need an NLP engine only for tokens and lemmas, which a
blank spaCy pipeline provides. Added here: person names (spaCy's small English NER model, with
the gazetteer and cue rules of ``names.py`` where it is unsure: ``ner.py``), identifiers next to
their cue words whatever their checksum says (``cued.py``), street addresses (patterns anchored
on a UK postcode, a US state and ZIP, or a German street suffix), dates written with month
names, and health content (``medical.py``).

LOCATION is a street address, never a city, a region or a country on its own: those are not
personal data, and the model's GPE / LOC entities only keep the name rules from taking them for
people.

Quasi-identifiers: a given name alone (no surname, title or cue) and a date with nothing that
ties it to a person (birth, an appointment, ...) are *weak* findings, redacted only when the
text (for a request: the conversation) holds other personal data. "David has three sisters" or
a table of stock prices by date go out as they are; "Chidi still owes me €150, IBAN ..." does
not.

``Detector(ner=False)`` is the heuristic-only configuration of earlier releases (name list and
rare-word rules for PERSON, no cued identifiers, no weak findings), kept so that ``tandem bench
privacy`` can measure both in one run.

No network: ``tldextract`` (used by Presidio's e-mail check) is pointed at the public-suffix
snapshot it ships instead of fetching the list on first use, and the spaCy model is the
installed package.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, PhoneRecognizer

from tandem.errors import ConfigError
from tandem.privacy.types import Finding
from tandem.settings import DEFAULT_PRIVACY_CATEGORIES

# Everything the detector knows; the default set (in settings) leaves out the rarer ones.
CATEGORIES = (
    *DEFAULT_PRIVACY_CATEGORIES,
    *(c for c in ("PASSPORT", "ACCOUNT_NUMBER") if c not in DEFAULT_PRIVACY_CATEGORIES),
    "CRYPTO",
    "US_PASSPORT",
)
DEFAULT_CATEGORIES = DEFAULT_PRIVACY_CATEGORIES
PHONE_REGIONS = ("US", "GB", "DE", "FR")

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_WEEKDAY = r"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day"
_MONTH_DATES = [
    Pattern(
        "month d",
        rf"\b(?:{_WEEKDAY},?\s+)?{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?\b(?!\s*(?:,\s*)?\d)",
        0.5,
    ),
    Pattern("d month", rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\b(?!\.?,?\s+\d)", 0.5),
    Pattern(
        "month d, yyyy", rf"\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+(?:19|20)\d\d\b", 0.6
    ),
    Pattern(
        "d month yyyy",
        rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\.?,?\s+(?:19|20)\d\d\b",
        0.6,
    ),
]
# Addresses anchored on what ends them: a UK postcode, or a US state and ZIP code, with the
# house number (and an optional flat/unit) up to 80 characters before, within one sentence.
_UNIT_WORDS = r"(?:Flat|Apt\.?|Apartment|Unit|Suite)\s+\w{1,5}"
_UNIT = rf"(?:{_UNIT_WORDS},?\s+)?"
# Between the house number and the end: no other number (but a flat or unit), so the match
# starts at the number nearest the street rather than at any earlier number in the sentence.
_STREET_PART = rf"(?:[^.;!?\n\d=]|{_UNIT_WORDS})"
_POSTCODE_ADDRESS = Pattern(
    "address up to a UK postcode",
    rf"\b{_UNIT}\d{{1,5}}[A-Z]?\s+{_STREET_PART}{{3,80}}?\b[A-Z]{{1,2}}\d[A-Z\d]?\s?\d[A-Z]{{2}}\b",
    0.6,
)
_ZIP_ADDRESS = Pattern(
    "address up to a US state and ZIP",
    rf"\b{_UNIT}\d{{1,6}}\s+{_STREET_PART}{{3,80}}?,\s*[A-Z]{{2}}\s+\d{{5}}(?:-\d{{4}})?\b",
    0.6,
)
# German-style "Schulstraße 8, 20355 Hamburg".
_DE_ADDRESS = Pattern(
    "street name, number, postcode and town",
    r"\b[A-ZÄÖÜ][\wäöüß-]*(?:straße|strasse|str\.|allee|weg|platz|gasse|ring|damm|ufer|chaussee)"
    r"\s+\d{1,4}[a-z]?(?:,\s*\d{5}\s+[A-ZÄÖÜ][\wäöüß-]+)?",
    0.6,
)
_UK_ADDRESS = Pattern(
    "uk street address",
    r"\b\d{1,4}[A-Z]?\s+(?:[A-Z][a-z]+\s+){1,3}(?:Street|St|Road|Rd|Lane|Ln|Avenue|Ave|Close|"
    r"Drive|Dr|Way|Place|Pl|Crescent|Terrace|Gardens|Square|Court|Grove|Hill|Row|Mews|Walk)\b"
    r"\.?(?:,\s*(?:[A-Z][a-z]+\s*){1,3})?(?:,?\s*[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2})?",
    0.6,
)


_CARD_16 = r"\b\d{4}([- ]?)\d{4}\1\d{4}\1\d{4}\b"


# What ties a date to a person (a birth, an appointment, a hospital stay, ...), within a few
# words before it ("born", "DOB:", "appointment on") or after it ("... is her birthday").
_DATE_CUE = re.compile(
    r"(?i)(?<!\w)(?:born|birth|birthdate|birthday|b\.|dob|d\.o\.b\.?|date\s+of\s+birth|"
    r"age[ds]?|appointment|appt|consultation|check-?up|follow-?up|admitted|admission|"
    r"discharged?|surgery|operation|procedure|biopsy|diagnos\w*|died|death|deceased|"
    r"funeral|wedding|anniversary|due\s+date|hired|hire\s+date|start\s+date|first\s+day|"
    r"last\s+day|visa|passport|expir\w*|issued|valid\s+until)(?!\w)"
)
_DATE_CUE_BEFORE = 50
_DATE_CUE_AFTER = 25


@dataclass(frozen=True)
class _Scan:
    findings: tuple[Finding, ...]
    pending: bool  # given names alone left to the model's later word (``Detector.settled``)


def supported(findings: Sequence[Finding], support: bool = False) -> list[Finding]:
    """``findings`` without the weak ones, unless something else personal is there too (a
    strong finding among them, or ``support`` from elsewhere in the conversation)."""
    if support or any(not f.weak for f in findings):
        return list(findings)
    return []


class _BlankSpacy(SpacyNlpEngine):
    """Presidio's spaCy engine on ``spacy.blank("en")``: tokens, no model download."""

    def __init__(self) -> None:
        super().__init__(models=[{"lang_code": "en", "model_name": "blank:en"}])

    def load(self) -> None:
        import spacy

        self.nlp = {"en": spacy.blank("en")}  # type: ignore[assignment]

    def _doc_to_nlp_artifact(self, doc: Any, language: str) -> NlpArtifacts:
        # A blank pipeline has no lemmatizer: lower-cased tokens stand in for lemmas, so that
        # Presidio's context words ("ssn", "card", "phone" near a match) still raise scores.
        return NlpArtifacts(
            entities=[],
            tokens=doc,
            tokens_indices=[t.idx for t in doc],
            lemmas=[t.lower_ for t in doc],
            nlp_engine=self,
            language=language,
        )


class WindowedPhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer run only on digit runs that could be phone numbers.

    libphonenumber's matcher scans the whole text once per region (most of the detector's time
    on long prompts); a cheap regex finds the candidates (7+ digits, with the usual separators)
    and the matcher runs on each, with a little context around it.
    """

    _CANDIDATE = re.compile(r"\+?\(?\d[\d\s().\-/]{5,}\d")

    def __init__(self, supported_regions: tuple[str, ...]):
        super().__init__(supported_regions=supported_regions)
        # A number written with its country code parses the same from any region: one pass.
        self._international = PhoneRecognizer(supported_regions=supported_regions[:1])

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results: list[RecognizerResult] = []
        for m in self._CANDIDATE.finditer(text):
            if sum(c.isdigit() for c in m.group()) < 7:
                continue
            lo, hi = max(0, m.start() - 2), min(len(text), m.end() + 2)
            if m.group().startswith("+"):
                found = self._international.analyze(text[lo:hi], entities, nlp_artifacts)  # type: ignore[arg-type]
            else:
                found = super().analyze(text[lo:hi], entities, nlp_artifacts)  # type: ignore[arg-type]
            for r in found:
                r.start, r.end = r.start + lo, r.end + lo
                # Presidio keeps only results it can trace back to a registered recognizer.
                r.recognition_metadata = {
                    RecognizerResult.RECOGNIZER_NAME_KEY: getattr(self, "name"),  # noqa: B009
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: getattr(self, "id"),  # noqa: B009
                }
                results.append(r)
        return list(EntityRecognizer.remove_duplicates(results))


def _offline_tldextract() -> None:
    import tldextract

    setattr(tldextract, "extract", tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None))  # noqa: B010


# The analyzer is built once per process, by whichever thread asks first (the lifespan's
# warm-up, normally); a request that needs it meanwhile waits for that build instead of starting
# a second one (``functools.cache`` is no lock: two threads would both build it).
_ANALYZER: AnalyzerEngine | None = None
_BUILD_LOCK = threading.Lock()
# Is ``AnalyzerEngine.analyze`` safe for concurrent calls? Presidio does not say so, and the
# pieces under it keep mutable state: a PatternRecognizer compiles each pattern lazily and
# caches it on the shared Pattern (flags first, regex second: not atomic), spaCy's tokenizer
# fills its cache and the vocabulary's string store with every unseen word, phonenumbers loads
# region metadata on first use. Unsure, so calls are serialized: the scan is CPU-bound Python,
# and under the GIL two at once would gain next to nothing anyway.
_ANALYZE_LOCK = threading.Lock()


def _analyzer() -> AnalyzerEngine:
    """The process's analyzer, built on first use (double-checked under a lock)."""
    global _ANALYZER
    analyzer = _ANALYZER
    if analyzer is None:
        with _BUILD_LOCK:
            analyzer = _ANALYZER
            if analyzer is None:
                analyzer = _ANALYZER = _build_analyzer()
    return analyzer


def _build_analyzer() -> AnalyzerEngine:
    """The recognizers both configurations share; the PERSON recognizer (and, for the NER
    configuration, the cued identifiers) come with each call (``Detector._recognizers``)."""
    from tandem.privacy.medical import medical_recognizer

    _offline_tldextract()
    # Loading the predefined recognizers warns once per recognizer of another language.
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    nlp = _BlankSpacy()
    nlp.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(nlp_engine=nlp, languages=["en"])
    # Phone numbers with a country code are found whatever the region; the regions matter only
    # for national formats, and each one is another pass of libphonenumber over the text.
    registry.remove_recognizer("PhoneRecognizer")
    registry.add_recognizer(WindowedPhoneRecognizer(supported_regions=PHONE_REGIONS))
    # Presidio's card patterns predate Mastercard's 2221–2720 range: add every 16-digit shape,
    # still subject to the recognizer's Luhn check.
    presidio_cards: list[Pattern] = getattr(CreditCardRecognizer(), "patterns")  # noqa: B009
    registry.remove_recognizer("CreditCardRecognizer")
    registry.add_recognizer(
        CreditCardRecognizer(patterns=[*presidio_cards, Pattern("16 digits", _CARD_16, 0.3)])
    )
    # Presidio's NER recognizer reads entities from the NLP engine, which is blank: names come
    # from the detector's own recognizer, which runs the model where it is needed.
    registry.remove_recognizer("SpacyRecognizer")
    registry.add_recognizer(
        PatternRecognizer(
            supported_entity="LOCATION",
            name="UkAddressRecognizer",
            patterns=[_UK_ADDRESS, _POSTCODE_ADDRESS, _ZIP_ADDRESS, _DE_ADDRESS],
            global_regex_flags=re.MULTILINE,  # case matters: capitalised words, postcodes
        )
    )
    registry.add_recognizer(
        PatternRecognizer(
            supported_entity="DATE_TIME", name="MonthNameDateRecognizer", patterns=_MONTH_DATES
        )
    )
    registry.add_recognizer(medical_recognizer())
    return AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])


class Detector:
    """Sensitive spans of the chosen categories, overlaps resolved (longest, then highest).

    ``ner`` (default True) runs spaCy's named-entity model for person names, the cued-identifier
    rules and the weak-finding rule; False is the heuristic-only configuration of earlier
    releases, kept for measurement (``tandem bench privacy`` runs both). ``public_figures``
    (NER configuration only) leaves well-known public figures named in full unredacted.

    Safe to call from several threads at once (the gateway scans off the event loop): the
    analyzer is built once and its calls are serialized (the model's included), and the per-text
    cache is an ``lru_cache`` (thread-safe; two threads missing on one text both scan it, same
    result).
    """

    def __init__(
        self,
        categories: tuple[str, ...] = DEFAULT_CATEGORIES,
        threshold: float = 0.35,
        *,
        ner: bool = True,
        public_figures: bool = True,
    ):
        unknown = set(categories) - set(CATEGORIES)
        if unknown:
            raise ConfigError(
                f"Unknown privacy categories {sorted(unknown)} (TANDEM_PRIVACY_CATEGORIES / "
                f"TANDEM_PRIVACY_KEEP_LOCAL); known: {', '.join(CATEGORIES)}."
            )
        self.categories = tuple(categories)
        self.threshold = threshold
        self.ner = ner
        self.public_figures = public_figures
        self._recognizers: list[EntityRecognizer] = self._own_recognizers()
        self._entity_list: list[str] | None = None
        self._find_cached = functools.lru_cache(maxsize=4096)(self._find)
        self._settled_cached = functools.lru_cache(maxsize=1024)(self._settle)

    def _own_recognizers(self) -> list[EntityRecognizer]:
        if not self.ner:
            from tandem.privacy.names import PersonNameRecognizer

            return [PersonNameRecognizer()]
        from tandem.privacy.cued import CuedIdentifierRecognizer
        from tandem.privacy.ner import NerPersonRecognizer

        return [NerPersonRecognizer(public_figures=self.public_figures), CuedIdentifierRecognizer()]

    def warm(self) -> None:
        """Build the analyzer, load the name list and the model now rather than on the first
        request."""
        from tandem.privacy.names import warm_up

        warm_up()
        if self.ner:
            from tandem.privacy.ner import pipeline

            pipeline()
        self.find("Warm up with Jane Doe and Sipho Ndlovu at jane@example.org, 1 Main Street.")

    def find(self, text: str) -> list[Finding]:
        """The findings in ``text``: weak ones only if something else personal is in it."""
        return supported(self.scan(text))

    def scan(self, text: str) -> list[Finding]:
        """Every finding in ``text``, weak ones included (``supported`` decides on those). A
        session sends its whole history to the cloud on every turn, so results are cached by
        text: each message is scanned once, not once per turn.

        Given names alone that only the model could decide are left out when nothing else
        personal is in ``text`` (they would be dropped): ``settled`` has them, for a
        conversation that holds personal data elsewhere."""
        return list(self._find_cached(text).findings)

    def settled(self, text: str) -> list[Finding]:
        """``scan`` with every given name alone decided by the model (see ``scan``)."""
        scanned = self._find_cached(text)
        if not scanned.pending:
            return list(scanned.findings)
        return list(self._settled_cached(text))

    def _entities(self, analyzer: AnalyzerEngine) -> list[str]:
        """The chosen categories that some recognizer looks for (the heuristic configuration
        has none for PASSPORT or ACCOUNT_NUMBER), worked out once."""
        if self._entity_list is None:
            known = set(analyzer.get_supported_entities("en"))
            known.update(e for r in self._recognizers for e in r.supported_entities)
            self._entity_list = [c for c in self.categories if c in known]
        return self._entity_list

    def _find(self, text: str) -> _Scan:
        if not text.strip():
            return _Scan((), False)
        analyzer = _analyzer()
        with _ANALYZE_LOCK:
            results = analyzer.analyze(
                text,
                language="en",
                entities=self._entities(analyzer),
                score_threshold=self.threshold,
                ad_hoc_recognizers=self._recognizers,
            )
            pending = bool(getattr(self._recognizers[0], "deferred", False))
            found = [
                Finding(
                    r.entity_type,
                    r.start,
                    r.end,
                    text[r.start : r.end],
                    r.score,
                    self.ner and self._weak(text, r),
                )
                for r in results
            ]
            if pending and any(not f.weak for f in found):
                # Personal data in the text itself: the deferred names count, decide them now.
                found, pending = self._with_all_names(text, found), False
        return _Scan(tuple(_resolve(found)), pending)

    def _settle(self, text: str) -> tuple[Finding, ...]:
        found = list(self._find_cached(text).findings)
        with _ANALYZE_LOCK:  # the model is not to be called from two threads at once
            return tuple(_resolve(self._with_all_names(text, found)))

    def _with_all_names(self, text: str, found: list[Finding]) -> list[Finding]:
        """``found`` with its PERSON findings replaced by the full decision, given names alone
        included."""
        from tandem.privacy.ner import person_spans

        others = [f for f in found if f.category != "PERSON"]
        people = [
            Finding("PERSON", s, e, text[s:e], score, weak)
            for (s, e), (score, weak) in person_spans(text, self.public_figures).items()
            if score >= self.threshold
        ]
        return others + people

    @staticmethod
    def _weak(text: str, r: RecognizerResult) -> bool:
        if r.entity_type == "PERSON":
            return bool((r.recognition_metadata or {}).get("weak", False))
        if r.entity_type == "DATE_TIME":
            line_start = text.rfind("\n", 0, r.start) + 1
            before = text[max(line_start, r.start - _DATE_CUE_BEFORE) : r.start]
            line_end = text.find("\n", r.end)
            stop = len(text) if line_end < 0 else line_end
            after = text[r.end : min(r.end + _DATE_CUE_AFTER, stop)]
            return not (_DATE_CUE.search(before) or _DATE_CUE.search(after))
        return False

    def timed(self, text: str) -> dict[str, float]:
        """Milliseconds each recognizer takes on ``text`` (for the privacy benchmark)."""
        analyzer = _analyzer()
        costs: dict[str, float] = {}
        entities = self._entities(analyzer)
        with _ANALYZE_LOCK:
            artifacts = analyzer.nlp_engine.process_text(text, "en")
            recognizers: list[Any] = analyzer.registry.get_recognizers(
                "en", entities, ad_hoc_recognizers=self._recognizers
            )
            for recognizer in recognizers:
                started = time.perf_counter()
                recognizer.analyze(text, entities, artifacts)
                costs[recognizer.name] = (time.perf_counter() - started) * 1000
        return costs


def _resolve(findings: list[Finding]) -> list[Finding]:
    """Non-overlapping findings: a longer span wins, then a higher score."""
    ordered = sorted(findings, key=lambda f: (-(f.end - f.start), -f.score, f.start))
    kept: list[Finding] = []
    for f in ordered:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)
