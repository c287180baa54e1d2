"""Finding sensitive spans in text: Presidio's recognizers on a blank spaCy pipeline, offline.

Presidio's pattern recognizers bring the checksums (Luhn for cards, mod-97 for IBANs, the SSN
rules, libphonenumber for phones). They need an NLP engine only for tokens and lemmas, which a
blank spaCy pipeline provides without a downloaded model. Added here: person names
(``names.py``), street addresses (patterns anchored on a UK postcode, a US state and ZIP, or a
German street suffix), dates written
with month names, and health content (``medical.py``).

No network: ``tldextract`` (used by Presidio's e-mail check) is pointed at the public-suffix
snapshot it ships instead of fetching the list on first use.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
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
from tandem.settings import DEFAULT_PRIVACY_CATEGORIES

# Everything the detector knows; the default set (in settings) leaves out the rarer ones.
CATEGORIES = (*DEFAULT_PRIVACY_CATEGORIES, "CRYPTO", "US_PASSPORT")
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


@dataclass(frozen=True)
class Finding:
    category: str
    start: int
    end: int
    text: str
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "score": round(self.score, 3),
        }


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
    from tandem.privacy.medical import medical_recognizer
    from tandem.privacy.names import PersonNameRecognizer

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
    # The NER recognizer has nothing to work with on a blank pipeline.
    registry.remove_recognizer("SpacyRecognizer")
    registry.add_recognizer(PersonNameRecognizer())
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

    Safe to call from several threads at once (the gateway scans off the event loop): the
    analyzer is built once and its calls are serialized, and the per-text cache is an
    ``lru_cache`` (thread-safe; two threads missing on one text both scan it, same result).
    """

    def __init__(self, categories: tuple[str, ...] = DEFAULT_CATEGORIES, threshold: float = 0.35):
        unknown = set(categories) - set(CATEGORIES)
        if unknown:
            raise ConfigError(
                f"Unknown privacy categories {sorted(unknown)} (TANDEM_PRIVACY_CATEGORIES / "
                f"TANDEM_PRIVACY_KEEP_LOCAL); known: {', '.join(CATEGORIES)}."
            )
        self.categories = tuple(categories)
        self.threshold = threshold
        self._find_cached = functools.lru_cache(maxsize=4096)(self._find)

    def warm(self) -> None:
        """Build the analyzer and load the name list now rather than on the first request."""
        from tandem.privacy.names import warm_up

        warm_up()
        self.find("Warm up with Jane Doe and Sipho Ndlovu at jane@example.org, 1 Main Street.")

    def find(self, text: str) -> list[Finding]:
        """The findings in ``text``. A session sends its whole history to the cloud on every
        turn, so results are cached by text: each message is scanned once, not once per turn."""
        return list(self._find_cached(text))

    def _find(self, text: str) -> tuple[Finding, ...]:
        if not text.strip():
            return ()
        analyzer = _analyzer()
        with _ANALYZE_LOCK:
            results = analyzer.analyze(
                text,
                language="en",
                entities=list(self.categories),
                score_threshold=self.threshold,
            )
        found = [
            Finding(r.entity_type, r.start, r.end, text[r.start : r.end], r.score) for r in results
        ]
        return tuple(_resolve(found))

    def timed(self, text: str) -> dict[str, float]:
        """Milliseconds each recognizer takes on ``text`` (for the privacy benchmark)."""
        analyzer = _analyzer()
        costs: dict[str, float] = {}
        with _ANALYZE_LOCK:
            artifacts = analyzer.nlp_engine.process_text(text, "en")
            recognizers: list[Any] = analyzer.registry.get_recognizers("en", list(self.categories))
            for recognizer in recognizers:
                started = time.perf_counter()
                recognizer.analyze(text, list(self.categories), artifacts)
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
