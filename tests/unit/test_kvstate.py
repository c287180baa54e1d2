"""KV snapshots are copied by llama.cpp alone (GIL released), never by Python."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import numpy as np
import pytest

from tandem.local import kvstate
from tandem.local.kvstate import Snapshot

STATE = bytes(range(256)) * 64  # what the fake llama.cpp holds for sequence 0


@pytest.fixture
def fake_llama(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """llama.cpp's state calls, recording the buffers they were handed."""
    seen: dict[str, Any] = {}

    def get_size(ctx: object, seq: int) -> int:
        return len(STATE) + 100  # llama.cpp's bound is above what it writes

    def get_data(ctx: object, dst: Any, size: int, seq: int) -> int:
        seen["get"] = ctypes.cast(dst, ctypes.c_void_p).value
        ctypes.memmove(dst, STATE, len(STATE))
        return len(STATE)

    def set_data(ctx: object, src: Any, size: int, seq: int) -> int:
        seen["set"] = ctypes.cast(src, ctypes.c_void_p).value
        seen["set_bytes"] = ctypes.string_at(src, size)
        return size

    monkeypatch.setattr(llama_cpp, "llama_state_seq_get_size", get_size)
    monkeypatch.setattr(llama_cpp, "llama_state_seq_get_data", get_data)
    monkeypatch.setattr(llama_cpp, "llama_state_seq_set_data", set_data)
    return seen


CTX = object()


def test_capture_keeps_the_buffer_llama_cpp_wrote(fake_llama: dict[str, Any]) -> None:
    snap = kvstate.capture(CTX, 0, list(range(7)))
    assert snap.data.tobytes() == STATE
    assert list(snap.tokens) == list(range(7))
    # The snapshot is the very buffer llama.cpp filled (no bytes() copy under the GIL).
    assert fake_llama["get"] == snap.data.ctypes.data
    assert snap.nbytes == len(STATE) + 7 * np.dtype(np.intc).itemsize


def test_restore_hands_llama_cpp_the_snapshot_itself(fake_llama: dict[str, Any]) -> None:
    data = np.frombuffer(STATE, dtype=np.uint8).copy()
    assert kvstate.restore(CTX, 0, Snapshot(np.arange(5, dtype=np.intc), data))
    assert fake_llama["set"] == data.ctypes.data  # no from_buffer_copy
    assert fake_llama["set_bytes"] == STATE


def test_restore_reports_a_cache_without_room(
    fake_llama: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llama_cpp, "llama_state_seq_set_data", lambda *a: 0)
    data = np.frombuffer(STATE, dtype=np.uint8).copy()
    assert not kvstate.restore(CTX, 0, Snapshot(np.arange(5, dtype=np.intc), data))


def _snap(n_bytes: int) -> Snapshot:
    return Snapshot(np.zeros(0, dtype=np.intc), np.zeros(n_bytes, dtype=np.uint8))


def test_session_cache_evicts_the_least_recently_saved_past_its_budget() -> None:
    cache = kvstate.SessionCache(250)
    for name in "abc":
        cache.put(name, _snap(100))
    assert "a" not in cache and "b" in cache and "c" in cache
    assert cache.stats["evictions"] == 1
    assert cache.take("b") is not None and cache.take("b") is None
    assert cache.stats["restores"] == 1 and cache.stats["misses"] == 1
    cache.put("big", _snap(300))  # larger than the whole budget: not kept
    assert "big" not in cache


def test_a_forgotten_session_is_not_saved_again_and_is_reported_once() -> None:
    cache = kvstate.SessionCache(1000)
    cache.put("a", _snap(10))
    cache.forget("a")
    assert "a" not in cache
    cache.put("a", _snap(10))  # its sequence is saved before the worker has cleared it
    assert "a" not in cache
    assert cache.forgotten() == {"a"}
    assert cache.forgotten() == set()
