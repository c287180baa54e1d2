"""Per-session KV-cache snapshots, so several conversations share one llama.cpp context.

The context holds as many conversations as it has sequences. When a request for another session
needs a sequence that holds one, that session's cells are copied out
(``llama_state_seq_get_data``: only that sequence's cells, no logits) into an LRU with a byte
budget, and the new session's snapshot, if any, is copied back in. ``Llama.save_state`` is not
used: it also copies the n_batch × n_vocab logits buffer (about 100 MB for SmolLM2) on every
save.

The LRU is guarded by a lock: ``forget`` comes from the gateway's threads, the rest from the
engine's worker thread.
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Snapshot:
    tokens: np.ndarray  # the token ids the cache holds, in order
    data: np.ndarray  # llama.cpp's serialized sequence state (uint8)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.tokens.nbytes


class SessionCache:
    """Snapshots of the sessions no sequence holds, in an LRU with a byte budget.

    Which sequence holds which session is the scheduler's (``tandem.local.batch``); it asks
    here for a session's snapshot when it gives the session a sequence, and hands one in when
    it gives a session's sequence to another request.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._snapshots: OrderedDict[str, Snapshot] = OrderedDict()
        self._lock = threading.Lock()
        self._forgotten: set[str] = set()  # sessions whose live sequence must be cleared
        self.stats = {"saves": 0, "restores": 0, "misses": 0, "evictions": 0, "live": 0}

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._snapshots.values())

    def __contains__(self, session: str) -> bool:
        with self._lock:
            return session in self._snapshots

    def take(self, session: str) -> Snapshot | None:
        """Remove and return the session's snapshot (None: a miss)."""
        with self._lock:
            snapshot = self._snapshots.pop(session, None)
        self.stats["restores" if snapshot is not None else "misses"] += 1
        return snapshot

    def put(self, session: str, snapshot: Snapshot) -> None:
        if snapshot.nbytes > self.budget_bytes:
            return
        with self._lock:
            if session in self._forgotten:
                return
            self._snapshots[session] = snapshot
            self.stats["saves"] += 1
            total = sum(s.nbytes for s in self._snapshots.values())
            while total > self.budget_bytes:
                _, evicted = self._snapshots.popitem(last=False)
                total -= evicted.nbytes
                self.stats["evictions"] += 1

    def forget(self, session: str) -> None:
        """Drop the session's snapshot; its live sequence is cleared at the next step."""
        with self._lock:
            self._snapshots.pop(session, None)
            self._forgotten.add(session)

    def forgotten(self) -> set[str]:
        """The sessions forgotten since the last call (the worker clears their sequences)."""
        with self._lock:
            names, self._forgotten = self._forgotten, set()
        return names

    def clear(self) -> None:
        """Drop every snapshot (the model is being unloaded)."""
        with self._lock:
            self._snapshots.clear()
            self._forgotten.clear()


# A snapshot is tens of MB (about 23 KB per token for SmolLM2). It is copied only inside
# llama.cpp's own calls, which ctypes makes with the GIL released: a copy made by Python
# (``bytes(buffer)``, ``from_buffer_copy``, a zero-filled ctypes array) holds the GIL for its
# whole length and stalls the event loop and every other thread, tens of ms per switch.
_BYTES = ctypes.POINTER(ctypes.c_uint8)


def capture(ctx: Any, seq: int, tokens: list[int]) -> Snapshot:
    """Copy out the cells of sequence ``seq``, which holds ``tokens``."""
    import llama_cpp

    size = llama_cpp.llama_state_seq_get_size(ctx, seq)
    buffer = np.empty(size, dtype=np.uint8)  # not zero-filled: llama.cpp writes it
    written = llama_cpp.llama_state_seq_get_data(ctx, buffer.ctypes.data_as(_BYTES), size, seq)
    return Snapshot(np.array(tokens, dtype=np.intc), buffer[:written])


def restore(ctx: Any, seq: int, snapshot: Snapshot) -> bool:
    """Copy a snapshot into the (empty) sequence ``seq``. False when llama.cpp cannot (no
    contiguous run of free cells in a fragmented cache): the caller prefills instead. The
    logits of the last position are not part of a snapshot, so the caller evaluates at least
    the last token again before sampling."""
    import llama_cpp

    data = snapshot.data
    return bool(
        llama_cpp.llama_state_seq_set_data(ctx, data.ctypes.data_as(_BYTES), data.size, seq)
    )
