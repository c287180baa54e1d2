"""Fitting a session's history into a window: what is kept, what is dropped, what stays put."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tandem.errors import ContextLengthError
from tandem.sessions.fit import fit_messages


def words(messages: Sequence[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) for m in messages)


def conversation(exchanges: int, size: int = 10) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "sys " * 5}]
    for i in range(exchanges):
        msgs.append({"role": "user", "content": f"u{i} " * size})
        msgs.append({"role": "assistant", "content": f"a{i} " * size})
    msgs.append({"role": "user", "content": "last " * size})
    return msgs


def test_a_history_that_fits_is_untouched() -> None:
    msgs = conversation(3)
    fitted = fit_messages(msgs, words, budget=100)
    assert fitted.messages == msgs
    assert (fitted.start, fitted.dropped, fitted.tokens) == (0, 0, words(msgs))


def test_overflow_drops_oldest_exchanges_and_keeps_system_and_latest() -> None:
    msgs = conversation(10)  # 5 + 10*20 + 10 = 215 words
    fitted = fit_messages(msgs, words, budget=100, slack=0.7)
    assert fitted.messages[0]["role"] == "system"
    assert fitted.messages[-1] == msgs[-1]
    assert fitted.tokens <= 70
    assert fitted.tokens == words(fitted.messages)
    # The cut is the earliest one under the target: one exchange more would not fit.
    assert words(msgs[:1] + msgs[fitted.start - 2 :]) > 70
    assert fitted.messages[1]["role"] == "user"
    assert fitted.dropped == fitted.start - 1
    assert msgs[fitted.start :] == fitted.messages[1:]


def test_the_cut_stays_put_while_the_history_still_fits() -> None:
    msgs = conversation(10)
    first = fit_messages(msgs, words, budget=100)
    grown = [*msgs, {"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]
    again = fit_messages(grown, words, budget=100, start=first.start)
    assert again.start == first.start  # same prefix: caches stay valid
    assert again.messages[: len(first.messages)] == first.messages


def test_a_stale_start_beyond_the_history_keeps_the_latest_exchange() -> None:
    msgs = conversation(2)
    fitted = fit_messages(msgs, words, budget=100, start=999)
    assert fitted.messages == [msgs[0], msgs[-1]]


def test_a_single_message_larger_than_the_window_is_an_error() -> None:
    msgs = [{"role": "user", "content": "word " * 500}]
    with pytest.raises(ContextLengthError, match="latest message alone"):
        fit_messages(msgs, words, budget=100)


def test_counting_is_logarithmic_in_the_history() -> None:
    calls = 0

    def counting(messages: Sequence[dict[str, str]]) -> int:
        nonlocal calls
        calls += 1
        return words(messages)

    fit_messages(conversation(200), counting, budget=100)
    assert calls <= 12
