"""Per-session KV-cache snapshots, so several conversations share one llama.cpp context.

The context holds one conversation's KV cache at a time. When a request for another session
arrives, the current owner's cache is copied out (``llama_state_seq_get_data``: only sequence 0's
used cells, no logits) into an LRU with a byte budget, and the new session's snapshot, if any, is
copied back in. ``Llama.save_state`` is not used: it also copies the n_batch × n_vocab logits
buffer (about 100 MB for SmolLM2) on every save.

All methods run on the engine's worker thread, except ``forget``, which only touches the LRU
under its lock and marks the live cache for clearing.
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

_SEQ = 0  # Llama.generate keeps everything in sequence 0


@dataclass(frozen=True)
class Snapshot:
    tokens: np.ndarray  # the token ids the cache holds, in order
    data: np.ndarray  # llama.cpp's serialized sequence state (uint8)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.tokens.nbytes


class SessionCache:
    """Which session the live KV cache belongs to, and snapshots of the others."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.owner: str | None = None
        self._snapshots: OrderedDict[str, Snapshot] = OrderedDict()
        self._lock = threading.Lock()
        self._clear_live = False
        self.stats = {"saves": 0, "restores": 0, "misses": 0, "evictions": 0}

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._snapshots.values())

    def __contains__(self, session: str) -> bool:
        with self._lock:
            return session in self._snapshots

    def switch(self, llm: Any, session: str | None) -> None:
        """Make the live cache ``session``'s before a generation for it (None: stateless)."""
        if self._clear_live:
            llm.reset()
            self.owner, self._clear_live = None, False
        if session == self.owner:
            return
        if self.owner is not None and llm.n_tokens > 0 and self.budget_bytes > 0:
            self._put(self.owner, _capture(llm))
        with self._lock:
            snapshot = self._snapshots.pop(session, None) if session is not None else None
        if snapshot is not None:
            _restore(llm, snapshot)
            self.stats["restores"] += 1
        elif session is not None:
            self.stats["misses"] += 1
        # Without a snapshot the live cache stays: a prompt sharing its prefix still reuses it.
        self.owner = session

    def forget(self, session: str) -> None:
        with self._lock:
            self._snapshots.pop(session, None)
            if self.owner == session:
                self._clear_live = True

    def clear(self) -> None:
        """Drop every snapshot (the model is being unloaded)."""
        with self._lock:
            self._snapshots.clear()
            self.owner = None
            self._clear_live = False

    def _put(self, session: str, snapshot: Snapshot) -> None:
        if snapshot.nbytes > self.budget_bytes:
            return
        with self._lock:
            self._snapshots[session] = snapshot
            self.stats["saves"] += 1
            total = sum(s.nbytes for s in self._snapshots.values())
            while total > self.budget_bytes:
                _, evicted = self._snapshots.popitem(last=False)
                total -= evicted.nbytes
                self.stats["evictions"] += 1


# A snapshot is tens of MB (about 23 KB per token for SmolLM2). It is copied only inside
# llama.cpp's own calls, which ctypes makes with the GIL released: a copy made by Python
# (``bytes(buffer)``, ``from_buffer_copy``, a zero-filled ctypes array) holds the GIL for its
# whole length and stalls the event loop and every other thread, tens of ms per switch.
_BYTES = ctypes.POINTER(ctypes.c_uint8)


def _capture(llm: Any) -> Snapshot:
    import llama_cpp

    size = llama_cpp.llama_state_seq_get_size(llm.ctx, _SEQ)
    buffer = np.empty(size, dtype=np.uint8)  # not zero-filled: llama.cpp writes it
    written = llama_cpp.llama_state_seq_get_data(
        llm.ctx, buffer.ctypes.data_as(_BYTES), size, _SEQ
    )
    tokens = np.array(llm.input_ids[: llm.n_tokens], dtype=np.intc)
    return Snapshot(tokens, buffer[:written])


def _restore(llm: Any, snapshot: Snapshot) -> None:
    import llama_cpp

    data = snapshot.data
    restored = llama_cpp.llama_state_seq_set_data(
        llm.ctx, data.ctypes.data_as(_BYTES), data.size, _SEQ
    )
    if restored == 0:
        llm.reset()  # could not restore: the next generation prefills from scratch
        return
    n = len(snapshot.tokens)
    llm.input_ids[:n] = snapshot.tokens
    llm.n_tokens = n
    # The logits of the last position are not part of the snapshot: Llama.generate must
    # re-evaluate at least one token before sampling (it does when this flag is set).
    llm._requires_eval = True
