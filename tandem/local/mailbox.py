"""Events from a worker thread to the streams of one event loop, delivered in bursts."""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class Mailbox:
    """Events from the worker thread to the streams of one event loop, delivered in bursts.

    ``call_soon_threadsafe`` wakes the loop through its self-pipe on every call (a write, and a
    read once it wakes). A step of S decoding streams sends S tokens at once, and tokens sent
    while the loop is busy pile up; here they all travel with the one wake-up already on its way.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[Any], Any]] = []

    def put(self, inbox: asyncio.Queue[Any], item: Any) -> None:
        with self._lock:
            self._pending.append((inbox, item))
            if len(self._pending) > 1:
                return  # the wake-up for the first is on its way and delivers this one too
        self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for inbox, item in pending:
            inbox.put_nowait(item)
