"""The NER detector: organisations and places are not people, cued identifiers fail closed,
quasi-identifiers need company, and placeholders the cloud rewrites never reach the client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.privacy import ner
from tandem.privacy.detect import Detector
from tandem.privacy.policy import PrivacyGuard, PrivacyMode
from tandem.privacy.redact import Placeholders, Restorer

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def detector() -> Detector:
    d = Detector()
    d.warm()
    return d


@pytest.fixture(scope="module")
def guard() -> PrivacyGuard:
    return PrivacyGuard()


def people(detector: Detector, text: str) -> list[str]:
    return [f.text for f in detector.find(text) if f.category == "PERSON"]


def test_the_model_is_the_installed_package_with_only_its_ner() -> None:
    nlp = ner.pipeline()
    assert nlp.pipe_names == ["ner"]
    assert nlp.meta["version"] == "3.8.0"
    assert {"PERSON", "ORG", "GPE", "LOC", "NORP", "PRODUCT"} <= set(nlp.get_pipe("ner").labels)


def test_a_country_is_not_a_person_and_the_question_goes_out_as_asked(
    detector: Detector, guard: PrivacyGuard
) -> None:
    question = "What is the capital of France?"
    # The heuristic-only detector of earlier releases took it for a first name.
    assert [f.text for f in Detector(ner=False).find(question)] == ["France"]
    assert detector.find(question) == []
    shield = guard.shield([{"role": "user", "content": question}], PrivacyMode.REDACT, None)
    assert shield is not None and shield.messages[0]["content"] == question


@pytest.mark.parametrize(
    "text",
    [
        "Meeting notes: the Splunk migration is behind; move the dashboards to Grafana.",
        "How do I share a Webflow page with the Asana board of the design team?",
        "Our revenue in Latin America and India grew, while France was flat.",
        "Summarize the Incident Response Handbook for the Berlin office.",
        "Compare the Dyson V15 with the Shark Stratos for the office carpets.",
    ],
)
def test_companies_products_places_and_titles_are_not_people(
    detector: Detector, text: str
) -> None:
    assert detector.find(text) == []


def test_people_are_still_found(detector: Detector) -> None:
    assert people(detector, "Please remember Ana Lima.") == ["Ana Lima"]
    assert people(detector, "Hi, I'm Amara Okafor.") == ["Amara Okafor"]
    assert people(detector, "Dr. Okafor saw my daughter Priya.") == ["Okafor", "Priya"]
    # The model says ORG; the e-mail address made of the name says a person is meant.
    text = "Write a cover letter for Arjun Nair, arjun.nair.dev@gmail.com, for a data role."
    assert "Arjun Nair" in people(detector, text)


def test_a_given_name_alone_is_redacted_only_next_to_other_personal_data(
    detector: Detector, guard: PrivacyGuard
) -> None:
    assert detector.find("David has three sisters. How many brothers does he have?") == []
    text = "David has three sisters; write to david.k@example.org about it."
    assert {f.category for f in detector.find(text)} == {"PERSON", "EMAIL_ADDRESS"}
    # Across a conversation: personal data in one message makes the name in another count.
    messages = [
        {"role": "user", "content": "My email is jo.bloggs@example.org."},
        {"role": "user", "content": "David has three sisters."},
    ]
    shield = guard.shield(messages, PrivacyMode.REDACT, None)
    assert shield is not None
    assert shield.messages[1]["content"] == "<PERSON_1> has three sisters."
    # And a session whose table already holds values.
    table = Placeholders({"Jo Bloggs": "<PERSON_1>"})
    alone = [{"role": "user", "content": "David has three sisters."}]
    shield = guard.shield(alone, PrivacyMode.REDACT, table)
    assert shield is not None and shield.messages[0]["content"] == "<PERSON_2> has three sisters."


def test_a_date_tied_to_no_one_is_not_redacted(detector: Detector) -> None:
    assert detector.find("The index closed at 4,200 on 2022-01-03 and at 4,150 a day later.") == []
    assert [f.text for f in detector.find("She was born on March 3, 1985.")] == ["March 3, 1985"]


def test_public_figures_named_in_full_stay_unless_cued(detector: Detector) -> None:
    assert detector.find("Pretend to be Elon Musk and pitch a rocket to Bill Gates.") == []
    assert people(detector, "Email a summary to my colleague Bill Gates.") == ["Bill Gates"]
    # Without the list, a famous name outside a staged role is a name like any other.
    assert people(Detector(public_figures=False), "Send the draft to Elon Musk.") == ["Elon Musk"]


def redacted(guard: PrivacyGuard, text: str) -> dict[str, int]:
    shield = guard.shield([{"role": "user", "content": text}], PrivacyMode.REDACT, Placeholders())
    assert shield is not None
    return dict(shield.counts)


@pytest.fixture(scope="module")
def no_list_guard() -> PrivacyGuard:
    return PrivacyGuard(ner=True, public_figures=False)


@pytest.mark.parametrize(
    "text",
    [
        "Pretend yourself to be Ingrid Halvorsen and answer as she would.",
        "Embody the persona of Marcus Feld from the novel throughout this conversation.",
        "Rewrite this paragraph in the style of Odile Marchetti.",
        "Write a debate between Tariq Osei and Lena Vogt on tidal power.",
    ],
)
def test_a_character_the_prompt_stages_is_not_redacted_alone(
    no_list_guard: PrivacyGuard, text: str
) -> None:
    # Names no list holds: the phrase before them, not the name, makes them a character.
    assert redacted(no_list_guard, text) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A cue before the name, or a relation after it: a real person.
        ("Pretend to be my neighbour Ingrid Halvorsen and write her a note.", {"PERSON": 1}),
        ("Act as Ingrid Halvorsen, my landlord, and reply to my complaint.", {"PERSON": 1}),
        # A role given a private person's details: the name goes with them.
        (
            "Pretend to be Ingrid Halvorsen and call 415-555-0132 to confirm the booking.",
            {"PERSON": 1, "PHONE_NUMBER": 1},
        ),
        # No staging phrase right before the name.
        ("Write an email to Ingrid Halvorsen in the style of Shakespeare.", {"PERSON": 1}),
    ],
)
def test_a_staged_name_is_redacted_when_the_text_says_a_real_person_is_meant(
    no_list_guard: PrivacyGuard, text: str, expected: dict[str, int]
) -> None:
    assert redacted(no_list_guard, text) == expected


CUED = [
    ("US_SSN", "My social security number is 078-05-1120, is that valid?", "078-05-1120"),
    ("US_SSN", "SSN: 123-45-6789", "123-45-6789"),
    ("US_SSN", "Is 219-09-9999 a real SSN?", "219-09-9999"),
    ("CREDIT_CARD", "My card number is 4111 1111 1111 1112.", "4111 1111 1111 1112"),
    ("CREDIT_CARD", "credit card: 5500-0000-0000-0005", "5500-0000-0000-0005"),
    ("IBAN_CODE", "Please pay to IBAN DE00 3704 0044 0532 0130 00.", "DE00 3704 0044 0532 0130 00"),
    ("PASSPORT", "My passport no. is X1234567 and it expires soon.", "X1234567"),
    ("PASSPORT", "passport number: 123456789", "123456789"),
    ("ACCOUNT_NUMBER", "Our account number is 12345678, sort code 12-34-56.", "12345678"),
    ("ACCOUNT_NUMBER", "Wire it to checking account # 000123456789.", "000123456789"),
]


@pytest.mark.parametrize(("category", "text", "value"), CUED)
def test_identifiers_next_to_their_cue_are_redacted_whatever_their_checksum(
    detector: Detector, guard: PrivacyGuard, category: str, text: str, value: str
) -> None:
    assert (category, value) in {(f.category, f.text) for f in detector.find(text)}
    shield = guard.shield([{"role": "user", "content": text}], PrivacyMode.REDACT, None)
    assert shield is not None and value not in shield.messages[0]["content"]


def test_without_a_cue_the_checksums_decide(detector: Detector) -> None:
    text = (
        "Order 123-45-6789 shipped; tracking 4111 1111 1111 1112; "
        "ref DE00 3704 0044 0532 0130 00."
    )
    assert detector.find(text) == []


def test_a_cue_ties_only_its_own_value(detector: Detector) -> None:
    # The card number is after "card", and the version number is not an account number.
    found = detector.find("Card number 4111 1111 1111 1112. The account app is at version 10.2.")
    assert [(f.category, f.text) for f in found] == [("CREDIT_CARD", "4111 1111 1111 1112")]


def test_clean_business_report_split_is_mostly_left_alone(detector: Detector) -> None:
    rows = [json.loads(line) for line in (DATA / "clean_business.jsonl").open(encoding="utf-8")]
    report = [r["text"] for r in rows if r["split"] == "report"]
    assert len(rows) >= 200 and len(report) >= 100
    flagged = [t for t in report if detector.find(t)]
    assert len(flagged) <= 0.10 * len(report), flagged


TABLE = {"Ana Lima": "<PERSON_1>", "ana@example.com": "<EMAIL_ADDRESS_1>"}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Hello <PERSON_1>!", "Hello Ana Lima!"),
        ("PERSON_1 wrote to EMAIL_ADDRESS_1.", "Ana Lima wrote to ana@example.com."),
        ("<Person_1>, [PERSON_1], {PERSON_1}", "Ana Lima, Ana Lima, Ana Lima"),
        ("< PERSON_1 > and <PERSON 1> and <PERSON-1>", "Ana Lima and Ana Lima and Ana Lima"),
        ("&lt;EMAIL_ADDRESS_1&gt;", "ana@example.com"),
        ("<NAME_1> at <EMAIL_1>", "Ana Lima at ana@example.com"),
        ("Ask <PERSON_2> to call <PERSON_1>.", "Ask that person to call Ana Lima."),
        ("The capital of <PERSON_3> is Paris.", "The capital of that person is Paris."),
        ("Sent to <LOCATION_1> on <DATE_TIME_2>.", "Sent to the address on the date."),
        ("(PERSON_1) **PERSON_1**", "(Ana Lima) **Ana Lima**"),
    ],
)
def test_rewritten_and_invented_placeholders_never_reach_the_client(
    answer: str, expected: str
) -> None:
    whole = Restorer(Placeholders(dict(TABLE)))
    assert whole.feed(answer) + whole.flush() == expected
    streamed = Restorer(Placeholders(dict(TABLE)))
    assert "".join(streamed.feed(c) for c in answer) + streamed.flush() == expected


@pytest.mark.parametrize(
    "text",
    [
        "person_1 = Person()  # code keeps its names",
        "MY_PERSON_1 and PERSON_1X are identifiers",
        "<div class='x'>[STEP_1] a < b, 3 < 4, R&D, AT&T</div>",
        "<FOO_1> is not a category",
    ],
)
def test_other_text_in_brackets_passes_unchanged(text: str) -> None:
    r = Restorer(Placeholders(dict(TABLE)))
    assert "".join(r.feed(c) for c in text) + r.flush() == text


def test_a_bare_placeholder_at_the_end_of_a_chunk_waits_for_the_next() -> None:
    r = Restorer(Placeholders(dict(TABLE)))
    assert r.feed("Dear PERSON_1") == "Dear "
    assert r.feed("2, hello") == "that person, hello"  # PERSON_12: never sent
    assert r.feed(" PERSON_") == " "
    assert r.feed("1.") == "Ana Lima."
    assert r.flush() == ""


def test_a_conversation_with_personal_data_still_lets_countries_through(
    guard: PrivacyGuard,
) -> None:
    # The given-name rule is applied late (the model sees such names only when they count),
    # and the model's veto holds then too.
    messages = [
        {"role": "user", "content": "My email is jo.bloggs@example.org."},
        {"role": "user", "content": "What is the capital of France? Ask Priya too."},
    ]
    shield = guard.shield(messages, PrivacyMode.REDACT, None)
    assert shield is not None
    assert shield.messages[1]["content"] == "What is the capital of France? Ask <PERSON_1> too."
