"""The privacy detector from several threads: one analyzer build, consistent results."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tandem.privacy import detect, names
from tandem.privacy.detect import Detector
from tandem.privacy.policy import PrivacyGuard, PrivacyMode
from tandem.privacy.redact import Placeholders


class _FakeAnalyzer:
    def analyze(self, text: str, **kwargs: Any) -> list[Any]:
        return []

    def get_supported_entities(self, language: str) -> list[str]:
        return []


def test_two_threads_at_first_use_build_the_analyzer_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builds: list[str] = []

    def slow_build() -> Any:
        builds.append(threading.current_thread().name)
        time.sleep(0.2)  # long enough for the other thread to arrive meanwhile
        return _FakeAnalyzer()

    monkeypatch.setattr(detect, "_ANALYZER", None)
    monkeypatch.setattr(detect, "_build_analyzer", slow_build)
    barrier = threading.Barrier(2)
    got: list[Any] = []

    def first_use(detector: Detector, text: str) -> None:
        barrier.wait()
        detector.find(text)
        got.append(detect._analyzer())

    # The warm-up and a request, each with its own detector (as the lifespan and a guard do).
    threads = [
        threading.Thread(target=first_use, args=(Detector(), f"text {i}"), name=f"t{i}")
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert got[0] is got[1]


def test_two_threads_read_the_name_list_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []

    def slow_read() -> frozenset[str]:
        reads.append(1)
        time.sleep(0.2)
        return frozenset({"ada"})

    monkeypatch.setattr(names, "_FIRST_NAMES", None)
    monkeypatch.setattr(names, "_read_first_names", slow_read)
    barrier = threading.Barrier(2)

    def first_use() -> frozenset[str]:
        barrier.wait()
        return names.first_names()

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: first_use(), range(2)))
    assert reads == [1]
    assert results[0] is results[1]


TEXTS = [
    f"Write to {name} at {user}@example.org or call +44 20 7946 09{i:02d}; card 4111 1111 1111 "
    f"1111, meeting on March {i + 1}, 2024 at 10.0.0.{i}."
    for i, (name, user) in enumerate(
        [
            ("Maria Gonzalez", "maria"),
            ("Sipho Ndlovu", "sipho"),
            ("Jane Doe", "jane"),
            ("Pieter van Dijk", "pieter"),
            ("Amara Okafor", "amara"),
            ("Kwame Mensah", "kwame"),
        ]
        * 4
    )
]


def test_concurrent_scans_match_sequential_ones() -> None:
    sequential = Detector()
    expected = [sequential.find(t) for t in TEXTS]
    guard = PrivacyGuard()  # a fresh per-text cache: every call below scans
    with ThreadPoolExecutor(6) as pool:
        found = list(pool.map(guard.detector.find, TEXTS))
    assert found == expected
    assert all(f for f in found)


class _SlowPlaceholders(Placeholders):
    """Numbers a new value, then pauses before recording it: a window for another thread."""

    def placeholder(self, category: str, value: str) -> str:
        known = self.by_value.get(value)
        if known is not None:
            return known
        n = 1 + sum(1 for p in self.by_value.values() if p.startswith(f"<{category}_"))
        time.sleep(0.002)
        self.by_value[value] = made = f"<{category}_{n}>"
        return made


def test_concurrent_shields_sharing_a_table_number_each_value_once() -> None:
    guard = PrivacyGuard()
    table = _SlowPlaceholders()
    messages = [[{"role": "user", "content": t}] for t in TEXTS]
    with ThreadPoolExecutor(6) as pool:
        shields = list(pool.map(lambda m: guard.shield(m, PrivacyMode.REDACT, table), messages))
    assert all(s is not None for s in shields)
    placeholders = list(table.by_value.values())
    assert len(placeholders) == len(set(placeholders))  # no placeholder for two values
