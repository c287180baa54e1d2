"""KV snapshots are copied by llama.cpp alone (GIL released), never by Python."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace
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


def _llm(n: int) -> SimpleNamespace:
    return SimpleNamespace(
        ctx=object(), input_ids=np.arange(4096, dtype=np.intc), n_tokens=n,
        _requires_eval=False, reset=lambda: None,
    )


def test_capture_keeps_the_buffer_llama_cpp_wrote(fake_llama: dict[str, Any]) -> None:
    snap = kvstate._capture(_llm(7))
    assert snap.data.tobytes() == STATE
    assert list(snap.tokens) == list(range(7))
    # The snapshot is the very buffer llama.cpp filled (no bytes() copy under the GIL).
    assert fake_llama["get"] == snap.data.ctypes.data
    assert snap.nbytes == len(STATE) + 7 * np.dtype(np.intc).itemsize


def test_restore_hands_llama_cpp_the_snapshot_itself(fake_llama: dict[str, Any]) -> None:
    data = np.frombuffer(STATE, dtype=np.uint8).copy()
    llm = _llm(0)
    kvstate._restore(llm, Snapshot(np.arange(5, dtype=np.intc), data))
    assert fake_llama["set"] == data.ctypes.data  # no from_buffer_copy
    assert fake_llama["set_bytes"] == STATE
    assert llm.n_tokens == 5 and llm._requires_eval
