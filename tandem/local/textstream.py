"""Turning a stream of token bytes into text that honours stop sequences.

Written here because the pieces llama-cpp-python offers work on whole completions: streamed
output must hold back text that may be the start of a stop sequence, and bytes that end in the
middle of a UTF-8 character, without delaying anything else.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class StopScanner:
    """Feeds text pieces; releases what cannot be part of a stop sequence."""

    def __init__(self, stops: Sequence[str]):
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add text; return the part that is safe to emit (empty once stopped)."""
        if self.stopped:
            return ""
        buf = self._held + text
        cut = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buf[:cut]
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """At the end of generation: release text held as a possible stop prefix."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that begins some stop sequence."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best


class TextAssembler:
    """Bytes of successive tokens → text, with stop sequences applied."""

    def __init__(self, stops: Sequence[str]):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._scanner = StopScanner(stops)

    @property
    def stopped(self) -> bool:
        return self._scanner.stopped

    def feed(self, piece: bytes) -> str:
        return self._scanner.feed(self._decoder.decode(piece))

    def flush(self) -> str:
        tail = self._scanner.feed(self._decoder.decode(b"", final=True))
        return tail + self._scanner.flush()
