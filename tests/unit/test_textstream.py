"""Stop-sequence hold-back and UTF-8 assembly of streamed token bytes."""

from __future__ import annotations

from tandem.local.textstream import StopScanner, TextAssembler


def feed_all(scanner: StopScanner, pieces: list[str]) -> str:
    return "".join(scanner.feed(p) for p in pieces) + scanner.flush()


def test_stop_split_across_pieces_is_never_emitted() -> None:
    scanner = StopScanner(["<end>"])
    emitted = [scanner.feed(p) for p in ["Hello <e", "n", "d> tail"]]
    assert emitted == ["Hello ", "", ""]
    assert scanner.stopped


def test_held_prefix_is_released_when_it_does_not_become_a_stop() -> None:
    scanner = StopScanner(["<end>"])
    assert scanner.feed("a <e") == "a "
    assert scanner.feed("x") == "<ex"
    assert not scanner.stopped


def test_held_text_is_flushed_at_the_end() -> None:
    assert feed_all(StopScanner(["###"]), ["one #", "#"]) == "one ##"


def test_earliest_of_several_stops_wins() -> None:
    scanner = StopScanner(["BB", "A"])
    assert scanner.feed("xxBBA") == "xx"


def test_no_stops_passes_everything_through() -> None:
    assert feed_all(StopScanner([]), ["a", "b"]) == "ab"


def test_multibyte_character_split_between_tokens() -> None:
    text = TextAssembler([])
    euro = "€".encode()
    assert text.feed(euro[:1]) == ""
    assert text.feed(euro[1:]) == "€"
    assert text.flush() == ""


def test_truncated_utf8_at_end_becomes_replacement_character() -> None:
    text = TextAssembler([])
    text.feed("é".encode()[:1])
    assert text.flush() == "\ufffd"
