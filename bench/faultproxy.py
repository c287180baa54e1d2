"""A fault-injecting TCP proxy for the tests and ``tandem bench faults``.

It sits between the gateway and an upstream HTTP server (the stand-in cloud) and adds latency,
jitter, a bandwidth cap, refused connections, a black hole, cut streams, injected HTTP errors
or a flapping upstream, switchable at run time from synchronous code: it runs its own asyncio
loop in a daemon thread. It is hand-written because Toxiproxy ships no binary on PyPI and a
small stdlib asyncio proxy does everything the tests need.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, TypeVar

_T = TypeVar("_T")

_READ_SIZE = 64 * 1024
_SLICES_PER_S = 20  # a bandwidth cap writes 50 ms worth of bytes at a time
_CALL_TIMEOUT_S = 5.0
_STOP_GRACE_S = 1.0


@dataclass(frozen=True)
class Fault:
    """What the proxy does to traffic; the default is a healthy pass-through."""

    latency_s: float = 0.0
    """Delay before forwarding each upstream→client chunk."""
    jitter_s: float = 0.0
    """Plus a uniform random 0..jitter_s per chunk."""
    bandwidth_bps: int | None = None
    """Cap on upstream→client bytes per second."""
    refuse: bool = False
    """Close the listening socket, so that new connections get ECONNREFUSED."""
    blackhole: bool = False
    """Accept and read the request, never answer, keep the socket open."""
    cut_after_bytes: int | None = None
    """Forward this many upstream→client bytes of each connection, then close both sides."""
    http_status: int | None = None
    """Answer every request with this status and a JSON error, without contacting upstream."""
    flap_period_s: float | None = None
    """Alternate every period between healthy and refusing, starting healthy."""

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.jitter_s < 0:
            raise ValueError("latency_s and jitter_s must be >= 0")
        if self.bandwidth_bps is not None and self.bandwidth_bps <= 0:
            raise ValueError("bandwidth_bps must be > 0, or None for no cap")
        if self.cut_after_bytes is not None and self.cut_after_bytes < 0:
            raise ValueError("cut_after_bytes must be >= 0")
        if self.http_status is not None and not 100 <= self.http_status <= 599:
            raise ValueError("http_status must be an HTTP status code (100-599)")
        if self.flap_period_s is not None and self.flap_period_s <= 0:
            raise ValueError("flap_period_s must be > 0, or None for no flapping")


class _Pacer:
    """Spaces writes so that a connection's average rate stays at the cap, with no burst credit."""

    def __init__(self) -> None:
        self._next = 0.0

    async def wait(self, nbytes: int, bps: int) -> None:
        now = time.monotonic()
        self._next = max(self._next, now) + nbytes / bps
        await asyncio.sleep(self._next - now)


class FaultProxy:
    """A TCP proxy to ``upstream_host:upstream_port`` whose faults can be switched at run time.

    ``set`` takes effect for new connections at once; latency, bandwidth and cuts also apply to
    data already flowing. Refusing closes the listening socket and resets the open connections,
    as a crashed upstream would (so pooled keep-alive connections cannot dodge it); healthy
    again, the proxy listens on the same port.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._host = host
        self._port = port
        self._rng = random.Random(seed)
        self._fault = Fault()
        self._flap_down = False
        self._stats = {"accepted": 0, "bytes_up": 0, "bytes_down": 0, "cut": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._flap_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- synchronous API -------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Start the loop thread and listen; port 0 picks a free port."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy is already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tandem-fault-proxy", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._open())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listener and every connection, then join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_CALL_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    def set(self, fault: Fault | None = None, **changes: Any) -> None:
        """Replace the fault (``None``: healthy), or update some fields of the current one."""
        base = fault if fault is not None else (self._fault if changes else Fault())
        new = dataclasses.replace(base, **changes)
        if self._loop is None:
            self._fault = new
        else:
            self._call(self._apply(new))

    @property
    def fault(self) -> Fault:
        return self._fault

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}/v1"

    @property
    def stats(self) -> dict[str, int]:
        """Connections accepted and cut, bytes forwarded up (to upstream) and down."""
        return dict(self._stats)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=_CALL_TIMEOUT_S)

    # -- listening state (runs on the loop) --------------------------------------------------

    async def _open(self) -> None:
        await self._listen()  # bind first, so that port 0 resolves even when refusing
        await self._apply(self._fault, restart_flap=True)

    async def _apply(self, fault: Fault, restart_flap: bool = False) -> None:
        old, self._fault = self._fault, fault
        if restart_flap or fault.flap_period_s != old.flap_period_s:
            if self._flap_task is not None:
                self._flap_task.cancel()
                self._flap_task = None
            self._flap_down = False
            if fault.flap_period_s is not None:
                self._flap_task = asyncio.create_task(self._flap(fault.flap_period_s))
        await self._sync_listening()

    async def _flap(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            self._flap_down = not self._flap_down
            await self._sync_listening()

    async def _sync_listening(self) -> None:
        refusing = self._fault.refuse or self._flap_down
        if refusing and self._server is not None:
            self._server.close()  # closes the listening socket now; connections stay open
            self._server = None
            await self._drop_connections()
        elif not refusing and self._server is None:
            await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self._host, self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)  # let the aborts close the sockets before set() returns

    async def _shutdown(self) -> None:
        if self._flap_task is not None:
            self._flap_task.cancel()
            self._flap_task = None
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = list(self._tasks)
        await self._drop_connections()
        if tasks:
            await asyncio.wait(tasks, timeout=_STOP_GRACE_S)
        await asyncio.sleep(0)

    # -- one connection (runs on the loop) ---------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self._stats["accepted"] += 1
        # A zero high-water mark makes drain() wait for the kernel, so pacing and cuts are exact.
        writer.transport.set_write_buffer_limits(high=0)
        fault = self._fault
        try:
            if fault.http_status is not None:
                await self._answer_status(reader, writer, fault.http_status)
            elif fault.blackhole:
                await self._pump_up(reader, None)
            else:
                await self._bridge(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.transport.abort()
        except asyncio.CancelledError:
            # Cancelling is how refuse and stop() end our own connection tasks; re-raising would
            # make Python 3.11's StreamReaderProtocol log it as an error.
            writer.transport.abort()
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _answer_status(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int
    ) -> None:
        # Read the whole request first: closing on unread data would reset the connection.
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readexactly(_content_length(head))
        self._stats["bytes_up"] += len(head) + len(body)
        response = _error_response(status)
        self._stats["bytes_down"] += len(response)
        writer.write(response)
        await writer.drain()

    async def _bridge(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._writers.add(up_writer)
        up = asyncio.create_task(self._pump_up(reader, up_writer))
        try:
            await self._pump_down(up_reader, writer, up_writer)
        finally:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
            self._writers.discard(up_writer)
            up_writer.close()

    async def _pump_up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None
    ) -> None:
        while data := await reader.read(_READ_SIZE):
            self._stats["bytes_up"] += len(data)
            if writer is not None:
                writer.write(data)
                await writer.drain()
        if writer is not None and writer.can_write_eof():
            writer.write_eof()

    async def _pump_down(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        pacer = _Pacer()
        sent = 0
        while data := await reader.read(_READ_SIZE):
            fault = self._fault
            delay = fault.latency_s + self._rng.uniform(0.0, fault.jitter_s)
            if delay > 0:
                await asyncio.sleep(delay)
            limit = self._fault.cut_after_bytes
            if limit is not None:
                data = data[: max(0, limit - sent)]
            await self._send(writer, data, pacer)
            sent += len(data)
            if limit is not None and sent >= limit:
                self._stats["cut"] += 1
                writer.transport.abort()
                up_writer.transport.abort()
                return

    async def _send(self, writer: asyncio.StreamWriter, data: bytes, pacer: _Pacer) -> None:
        while data:
            bps = self._fault.bandwidth_bps  # read per slice, so a change applies mid-stream
            size = len(data) if bps is None else max(1, bps // _SLICES_PER_S)
            piece, data = data[:size], data[size:]
            if bps is not None:
                await pacer.wait(len(piece), bps)
            self._stats["bytes_down"] += len(piece)  # counted first: a reader may check at once
            writer.write(piece)
            await writer.drain()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            with contextlib.suppress(ValueError):
                return max(0, int(value.strip()))
    return 0


def _error_response(status: int) -> bytes:
    body = json.dumps({"error": {"message": f"injected {status}"}}).encode()
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Injected"
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if status in (429, 503):
        lines.append("Retry-After: 1")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
