"""The worker thread's events reach the event loop's streams in bursts, in order, none stuck."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from tandem.local.mailbox import Mailbox


def _counting(loop: asyncio.AbstractEventLoop) -> list[int]:
    calls = [0]
    original = loop.call_soon_threadsafe

    def call_soon_threadsafe(callback: Any, *args: Any) -> Any:
        calls[0] += 1
        return original(callback, *args)

    loop.call_soon_threadsafe = call_soon_threadsafe  # type: ignore[method-assign]
    return calls


def test_events_sent_while_the_loop_is_busy_travel_in_one_wake_up_in_order() -> None:
    async def main() -> tuple[list[Any], list[Any], int]:
        loop = asyncio.get_running_loop()
        calls = _counting(loop)
        mailbox = Mailbox(loop)
        a: asyncio.Queue[Any] = asyncio.Queue()
        b: asyncio.Queue[Any] = asyncio.Queue()

        def worker() -> None:  # one step of two streams, 25 times, while the loop is busy
            for i in range(25):
                mailbox.put(a, ("a", i))
                mailbox.put(b, ("b", i))

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        time.sleep(0.05)  # the loop is busy: nothing is delivered yet
        assert a.empty() and b.empty()
        got_a = [await asyncio.wait_for(a.get(), 1) for _ in range(25)]
        got_b = [await asyncio.wait_for(b.get(), 1) for _ in range(25)]
        return got_a, got_b, calls[0]

    got_a, got_b, wake_ups = asyncio.run(main())
    assert got_a == [("a", i) for i in range(25)]
    assert got_b == [("b", i) for i in range(25)]
    assert wake_ups == 1


def test_an_event_after_a_delivery_wakes_the_loop_again() -> None:
    async def main() -> tuple[list[Any], int]:
        loop = asyncio.get_running_loop()
        calls = _counting(loop)
        mailbox = Mailbox(loop)
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        got = []
        for i in range(3):  # each sent when the previous one has been delivered
            threading.Thread(target=mailbox.put, args=(inbox, i)).start()
            got.append(await asyncio.wait_for(inbox.get(), 1))
        return got, calls[0]

    got, wake_ups = asyncio.run(main())
    assert got == [0, 1, 2]
    assert wake_ups == 3
