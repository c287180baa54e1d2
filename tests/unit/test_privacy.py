"""Detection, placeholders and their restoration in streamed text."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.errors import ConfigError
from tandem.privacy.detect import Detector
from tandem.privacy.policy import PrivacyGuard, strictest
from tandem.privacy.redact import Placeholders, Restorer, redact_text
from tandem.privacy.types import Finding, PrivacyMode

SAMPLE = (
    "I'm Maria Gonzalez (maria.gonzalez@example.org, +44 20 7946 0958). Card 4111 1111 1111 "
    "1111, IBAN DE89 3704 0044 0532 0130 00, SSN 536-22-1234, server 10.20.30.40, born "
    "March 3, 1985, living at 1428 Elm Street, Springfield, IL 62704."
)
EXPECTED = {
    "PERSON": "Maria Gonzalez",
    "EMAIL_ADDRESS": "maria.gonzalez@example.org",
    "PHONE_NUMBER": "+44 20 7946 0958",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IBAN_CODE": "DE89 3704 0044 0532 0130 00",
    "US_SSN": "536-22-1234",
    "IP_ADDRESS": "10.20.30.40",
    "DATE_TIME": "March 3, 1985",
    "LOCATION": "1428 Elm Street, Springfield, IL 62704",
}


@pytest.fixture(scope="module")
def detector() -> Detector:
    d = Detector()
    d.warm()
    return d


def test_each_category_is_found_with_its_exact_span(detector: Detector) -> None:
    found = {f.category: f.text for f in detector.find(SAMPLE)}
    assert found == EXPECTED


def test_checksums_reject_lookalikes(detector: Detector) -> None:
    # No cue words: the checksums decide (a cued value is redacted all the same, see
    # test_privacy_ner.py).
    text = (
        "Tracking 4111 1111 1111 1112, ref DE00 3704 0044 0532 0130 00, version 3.11.7, "
        "order ORD-2024-55831, in 2019, 12 x 34."
    )
    assert detector.find(text) == []


def test_names_need_a_known_first_name_a_title_or_a_cue(detector: Detector) -> None:
    people = [
        f.text
        for f in detector.find(
            "Dr. Okafor saw my daughter Priya. Please Call Back Later. Jaguar Land Rover."
        )
        if f.category == "PERSON"
    ]
    assert people == ["Okafor", "Priya"]


def test_health_content_is_its_own_category(detector: Detector) -> None:
    cats = {f.category for f in detector.find("I take metformin 500 mg for type 2 diabetes.")}
    assert cats == {"MEDICAL"}
    assert detector.find("Write a poem about the sea.") == []


def test_unknown_categories_are_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="Unknown privacy categories"):
        Detector(("PERSON", "SHOE_SIZE"))


def test_placeholders_are_numbered_per_category_and_reused() -> None:
    table = Placeholders()
    findings = [
        Finding("PERSON", 0, 3, "Ann", 1.0),
        Finding("PERSON", 8, 11, "Bob", 1.0),
        Finding("EMAIL_ADDRESS", 15, 22, "a@b.org", 1.0),
    ]
    text = "Ann and Bob at a@b.org"
    assert redact_text(text, findings, table) == "<PERSON_1> and <PERSON_2> at <EMAIL_ADDRESS_1>"
    again = redact_text("Bob", [Finding("PERSON", 0, 3, "Bob", 1.0)], table)
    assert again == "<PERSON_2>"


def test_the_guard_keeps_health_content_local_and_redacts_the_rest() -> None:
    guard = PrivacyGuard()
    msgs = [{"role": "user", "content": "Email jane.roe@example.com about the invoice."}]
    shield = guard.shield(msgs, PrivacyMode.REDACT, None)
    assert shield is not None
    assert shield.messages[0]["content"] == "Email <EMAIL_ADDRESS_1> about the invoice."
    assert shield.counts == {"EMAIL_ADDRESS": 1}
    medical = [{"role": "user", "content": "My HbA1c is 8.1, should I raise my insulin?"}]
    assert guard.shield(medical, PrivacyMode.REDACT, None) is None
    assert guard.shield(msgs, PrivacyMode.LOCAL_ONLY, None) is None
    raw = guard.shield(msgs, PrivacyMode.ALLOW, None)
    assert raw is not None and raw.messages == msgs


def test_strictest_mode_wins() -> None:
    assert strictest("allow", "local_only") == PrivacyMode.LOCAL_ONLY
    assert strictest("redact", None, "allow") == PrivacyMode.REDACT
    assert strictest() == PrivacyMode.REDACT


TABLE = {"Maria Gonzalez": "<PERSON_1>", "maria@example.org": "<EMAIL_ADDRESS_1>"}
ECHOES = st.lists(
    st.sampled_from(
        [
            "<PERSON_1>",
            "<EMAIL_ADDRESS_1>",
            "<PERSON_9>",
            "PERSON_1",
            "[Person_1]",
            "< PERSON_1 >",
            "&lt;EMAIL_ADDRESS_1&gt;",
            "a < b",
            "<",
            ">",
            "<P",
            "&",
            " ",
        ]
    )
    | st.text(alphabet="ab <>[]&lt;_1PERSONperson", max_size=6),
    max_size=12,
)


def _restore_whole(answer: str) -> str:
    restorer = Restorer(Placeholders(dict(TABLE)))
    return restorer.feed(answer) + restorer.flush()


@settings(max_examples=300, deadline=None)
@given(parts=ECHOES, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_restoring_is_the_same_however_the_stream_is_cut(parts: list[str], cuts: list[int]) -> None:
    answer = "".join(parts)
    bounds = sorted({0, len(answer), *(c % (len(answer) + 1) for c in cuts)})
    chunks = [answer[a:b] for a, b in itertools.pairwise(bounds)]
    restorer = Restorer(Placeholders(dict(TABLE)))
    streamed = "".join(restorer.feed(c) for c in chunks) + restorer.flush()
    assert streamed == _restore_whole(answer)


@settings(max_examples=300, deadline=None)
@given(parts=ECHOES)
def test_exact_placeholders_are_restored_and_none_reaches_the_client(parts: list[str]) -> None:
    answer = " ".join(parts)
    restored = _restore_whole(answer)
    for p in ("<PERSON_1>", "<EMAIL_ADDRESS_1>", "<PERSON_9>", "PERSON_1", "EMAIL_ADDRESS_1"):
        assert p not in restored
    if "<PERSON_1>" in answer:
        assert "Maria Gonzalez" in restored


def test_restorer_holds_back_only_what_could_be_a_placeholder() -> None:
    r = Restorer(Placeholders(dict(TABLE)))
    assert r.feed("Hello <PERS") == "Hello "
    assert r.feed("ON_1>, 3 < 4") == "Maria Gonzalez, 3 < 4"
    assert r.feed(" <EMAIL") == " "
    assert r.flush() == "<EMAIL"  # never completed: passed on as is
