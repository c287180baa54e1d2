"""The chat protocol of route-eval: items, grading, splits and the cascade's K."""

from __future__ import annotations

import re

import pytest

from tandem.errors import ConfigError
from tandem.routing.chat_protocol import (
    arith_items,
    cascade_features,
    chat_rows,
    choice_of,
    grade,
    mc_question,
    split,
    ttft_cost,
)
from tandem.routing.signals import RunningConfidence
from tandem.routing.tasks import Item

CHOICES = ["wash hands", "turn off all equipment", "put away all glassware",
           "wash instruments and table tops"]


def mc(gold: int = 1) -> Item:
    return Item("k", "q", {"choices": CHOICES, "gold": gold, "kind": "choice"}, "arc_easy")


def test_the_question_is_asked_with_lettered_options() -> None:
    text = mc_question("Question: Which is a mammal?\nAnswer:", ["cat", "trout"])
    assert text == "Which is a mammal?\nA. cat\nB. trout"


@pytest.mark.parametrize(("answer", "picked"), [
    ("B", 1),
    ("The correct answer is B. turn off all equipment.", 1),
    ("The last action is:\n\nD. wash instruments and table tops", 3),
    ("The answer is: **C**", 2),
    ("Meiosis happens in the ovaries.\n\nTherefore, the correct answer is \\boxed{C}.", 2),
    ("So: \\boxed{B}", 1),
    ("**A)** wash hands", 0),
    ("Before leaving, always turn off all equipment.", 1),  # the one option it names
    ("A. wash hands\nB. turn off all equipment\nC. put away", None),  # repeats the options
    ("Put away all glassware, then wash hands.", None),  # names two
    ("A student should always be careful.", None),  # "A" is a word, not a letter
    ("I am not sure.", None),
])
def test_an_answer_picks_an_option(answer: str, picked: int | None) -> None:
    assert choice_of(mc(), answer) == picked
    assert grade(mc(), answer) is (picked == 1)


def test_letters_beyond_the_options_do_not_count() -> None:
    two = Item("k", "q", {"choices": ["yes", "no"], "gold": 0, "kind": "choice"}, "piqa")
    assert choice_of(two, "The answer is D.") is None


def test_arithmetic_items_are_seeded_and_their_gold_is_right() -> None:
    items = arith_items(40, seed=3)
    assert [i.prompt for i in items] == [i.prompt for i in arith_items(40, seed=3)]
    assert [i.prompt for i in items] != [i.prompt for i in arith_items(40, seed=4)]
    for item in items:
        nums = [int(n) for n in re.findall(r"\d+", item.prompt)]
        gold = item.fields["gold_number"]
        family = item.fields["family"]
        a, b = nums[0], nums[1]
        expected = {0: a * b, 1: nums[-1] - a * b, 2: a * b, 3: a + b}[family]
        assert gold == expected and gold > 0


def test_a_number_answer_is_graded_by_its_final_number() -> None:
    item = arith_items(1)[0]  # family 0: a product
    gold = item.fields["gold_number"]
    assert grade(item, f"Let me compute: 10 x 3 = 30, so the result is {gold:,}.")
    assert grade(item, f"\\boxed{{{gold}}} and then 7 more words 12")
    assert not grade(item, f"It is {gold} or maybe {gold + 1}")
    assert not grade(item, "I cannot say.")


def test_the_halves_are_disjoint_and_cover_the_items() -> None:
    items = arith_items(200)
    tune, report = split(items, "tune"), split(items, "report")
    assert {i.key for i in tune}.isdisjoint({i.key for i in report})
    assert len(tune) + len(report) == 200 and 60 < len(tune) < 140
    with pytest.raises(ConfigError):
        split(items, "test")


def record(pieces: list[str], lps: list[float | None]) -> dict[str, object]:
    return {"pieces": pieces, "logprobs": lps, "answer": "".join(pieces), "ttft_s": 0.1,
            "seconds": 0.1 + 0.01 * (len(pieces) - 1)}


def test_the_cascade_features_are_the_gateways_after_k_tokens() -> None:
    pieces = ["The", " answer", " is", " B", "."]
    lps: list[float | None] = [-0.1, -2.0, None, -0.5, -3.0]  # a step without a log-probability
    live = RunningConfidence("prompt text")
    for p, lp in zip(pieces[:4], lps[:4], strict=True):
        live.add(lp, p)
    assert cascade_features("prompt text", record(pieces, lps), k=3) == live.features()
    assert cascade_features("prompt text", record(pieces, lps), k=3)["n_tokens"] == 3


def test_rows_are_graded_from_the_stored_answers() -> None:
    items = [mc(1), Item("j", "q", {"choices": CHOICES, "gold": 0, "kind": "choice"}, "x")]
    local = {"k": record(["B"], [-0.1]), "j": record(["B"], [-0.1])}
    local["k"]["correct"] = 0  # a stale grade in the record does not count
    cloud = {"k": {"answer": "C"}, "j": {"answer": "A"}}
    rows = chat_rows("arc_easy", items, local, cloud, k=8)
    assert rows.local_ok.tolist() == [1, 0] and rows.cloud_ok.tolist() == [0, 1]
    assert rows.gains.tolist() == [-1, 1]
    assert "lp_mean" in rows.features[0] and "log_chars" in rows.features[0]


def test_ttft_cost_grows_with_k_until_the_answer_ends() -> None:
    local = {"k": record(["a"] * 10, [-0.1] * 10)}
    items = [mc()]
    assert ttft_cost(local, items, 1) == pytest.approx(0.1)
    assert ttft_cost(local, items, 5) == pytest.approx(0.14)
    assert ttft_cost(local, items, 32) == pytest.approx(0.19)
