"""LocalEngine: one llama.cpp context, owned by one worker thread, streaming tokens with logprobs.

The context has several sequences (``TANDEM_LOCAL_PARALLEL``, default from the memory plan):
concurrent requests decode together in one batch (``tandem.local.batch``).

Requests queue for the worker (bounded: a full queue is an ``OverloadedError``, HTTP 503).
The model loads in the background; after ``keep_alive_s`` idle seconds it is unloaded (state
``cold``) until a request or :meth:`LocalEngine.wake` loads it again. A load that fails leaves
the engine ``failed`` and is retried with exponential backoff; a worker thread that dies fails
its queued requests at once and is restarted. Token counting and chat-template rendering for the
gateway use a vocabulary-only copy of the model (``PromptTokenizer``), never the worker's
context. A request goes to the sequence holding the longest prefix of its prompt, so a
follow-up turn prefills only its new tokens; a request that names a session goes to the
sequence holding that session, or gets its KV snapshot back (``SessionCache``), so interleaved
conversations do not re-prefill their histories.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.errors import ModelLoadError, OverloadedError, TandemError
from tandem.events import GenerationParams, LocalEvent
from tandem.local.batch import Prepared, Scheduler
from tandem.local.chat import Message
from tandem.local.kvstate import SessionCache
from tandem.local.logits import LogitReader
from tandem.local.mailbox import Mailbox
from tandem.local.memory import (
    MemoryPlan,
    check_budget,
    ggml_kv_type,
    needs_flash_attn,
    plan_memory,
)
from tandem.local.model import LoadedModel
from tandem.local.prompting import PromptBuilder
from tandem.local.tokenizer import PromptTokenizer
from tandem.settings import Settings
from tandem.tiers import EngineState

log = logging.getLogger("tandem.local")
Sink = Callable[[LocalEvent | BaseException | None], None]
# Seconds before retrying a failed load: doubles after each failure, up to the cap.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
# Sequences decoded together when TANDEM_LOCAL_PARALLEL is not set, fewer if the RAM budget
# cannot hold their KV cache.
DEFAULT_PARALLEL = 4


@dataclass
class _Job:
    messages: Sequence[Message]
    params: GenerationParams
    assistant_prefix: str
    sink: Sink  # receives events, then an exception or None as the end marker
    session: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    ended: bool = False  # the sink has received its end marker
    submitted_at: float = field(default_factory=time.perf_counter)
    prepared: Prepared | None = None  # its prompt tokens, once the worker has read them

    def end(self, error: BaseException | None = None) -> None:
        if not self.ended:
            self.ended = True
            self.sink(error)


_WAKE = object()  # a queue item that asks the worker to load the model


class LocalEngine:
    """A GGUF model behind a worker thread. Thread-safe; ``stream`` is the async primitive."""

    def __init__(self, settings: Settings, model_path: Path, chat_format: str | None = None):
        self.model_path = model_path
        self.model_name = model_path.stem
        self._settings = settings
        self._chat_format = chat_format or settings.local_chat_format
        # Jobs, _WAKE, or None (stop). Bounded for jobs; _WAKE never blocks (see wake()).
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_size)
        self._thread: threading.Thread | None = None
        self._llm: LoadedModel | None = None
        self._scheduler: Scheduler | None = None
        self._prompts: PromptBuilder | None = None  # for the loaded model
        self.state = EngineState.COLD
        self.load_time_s: float | None = None
        self.last_error: str | None = None
        self.sessions = SessionCache(int(settings.session_state_mib * 2**20))
        self.tokenizer = PromptTokenizer(model_path, self._chat_format)
        self._lock = threading.Lock()  # guards state transitions made from several threads
        self._retry_s = RETRY_FIRST_S
        self._retry_at: float | None = None  # when a failed engine tries to load again
        self._held: _Job | None = None  # taken from the queue, waiting for a free slot
        self._stopping = False
        self.plan: MemoryPlan | None = None  # the memory plan of the loaded context
        # The streams' events to each event loop that streams (a server has one).
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailbox] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def n_ctx(self) -> int:
        return self._settings.n_ctx

    @property
    def queue_depth(self) -> int:
        """Requests waiting or decoding."""
        scheduler = self._scheduler
        running = scheduler.active if scheduler is not None else 0
        return self._queue.qsize() + running + int(self._held is not None)

    @property
    def n_seq(self) -> int:
        """Sequences of the context (the last one loaded)."""
        return 1 if self.plan is None else self.plan.n_seq

    @property
    def busy(self) -> bool:
        scheduler = self._scheduler
        return scheduler is not None and scheduler.active > 0

    @property
    def tools(self) -> bool:
        """Whether the model's chat template calls tools (read without loading the weights)."""
        try:
            return self.tokenizer.calls_tools()
        except ModelLoadError:
            return False

    @property
    def fim(self) -> bool:
        """Whether the model's vocabulary has fill-in-the-middle tokens (read without loading
        the weights)."""
        try:
            return self.tokenizer.fim_tokens() is not None
        except ModelLoadError:
            return False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker; the model loads in the background (state ``loading``)."""
        with self._lock:
            if self._thread is None:
                self._stopping = False
                self.state = EngineState.LOADING
                self._start_worker(delay_s=0.0)

    def _start_worker(self, delay_s: float) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(delay_s,), name="tandem-local", daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        """Load the model now if it is cold (unloaded after its keep-alive), or if it failed and
        its retry is due. Cheap and idempotent: the gateway calls it whenever it finds the
        engine not ready, so an ``auto`` request answered by the cloud meanwhile brings the
        device back to local-first."""
        with self._lock:
            if self._thread is None:
                if self._stopping:
                    return
                self.state = EngineState.LOADING
                self._start_worker(delay_s=0.0)
                return
            due = self.state == EngineState.COLD or (
                self.state == EngineState.FAILED
                and self._retry_at is not None
                and time.monotonic() >= self._retry_at
            )
            if not due:
                return
            self.state = EngineState.LOADING
        # A full queue holds jobs, and the worker loads for the first of them anyway.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_WAKE)

    def close(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)
        self._unload()
        self.tokenizer.close()

    async def aclose(self) -> None:
        """``close`` off the event loop (it joins the worker thread)."""
        await asyncio.to_thread(self.close)

    def wait_ready(self, timeout_s: float = 60.0) -> EngineState:
        """Block until the model has loaded or failed (for CLIs and tests)."""
        deadline = time.monotonic() + timeout_s
        while self.state == EngineState.LOADING and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.state

    def health(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "model": self.model_name,
            "load_time_s": self.load_time_s,
            "n_ctx": self.n_ctx,
            "parallel": self.n_seq,
            "queue_depth": self.queue_depth,
            "last_error": self.last_error,
            "retry_in_s": self.retry_in_s(),
        }

    def retry_in_s(self) -> float | None:
        """Seconds until a failed engine tries to load again (None unless failed)."""
        if self.state != EngineState.FAILED or self._retry_at is None:
            return None
        return round(max(0.0, self._retry_at - time.monotonic()), 1)

    # -- requests --------------------------------------------------------------------------

    def count_tokens(self, messages: Sequence[Message]) -> int | None:
        """Prompt length in tokens (None if the vocabulary cannot be read). Blocking, safe from
        any thread and in any engine state: it never touches the worker's context."""
        try:
            return self.tokenizer.count(messages)
        except ModelLoadError:
            return None

    def forget(self, session: str) -> None:
        """Drop the session's KV snapshot (and clear the live cache if it holds it)."""
        self.sessions.forget(session)

    def submit(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        sink: Sink,
        assistant_prefix: str = "",
        session: str | None = None,
    ) -> threading.Event:
        """Queue a generation; events go to ``sink``. Returns the job's cancel flag."""
        if self.state == EngineState.FAILED:
            self.wake()  # a retry that is due starts now; this request does not wait for it
            raise ModelLoadError(
                f"The local model is unavailable: {self.last_error} (next load attempt in "
                f"{self.retry_in_s() or 0:.0f} s)."
            )
        if self._thread is None:
            self.start()
        job = _Job(messages, params, assistant_prefix, sink, session)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise OverloadedError(
                f"The local model is busy ({self._settings.queue_size} requests waiting); "
                "retry shortly or raise TANDEM_QUEUE_SIZE."
            ) from None
        return job.cancelled

    async def stream(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        assistant_prefix: str = "",
        session: str | None = None,
    ) -> AsyncGenerator[LocalEvent, None]:
        """Stream a generation; closing the iterator early cancels it."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[LocalEvent | BaseException | None] = asyncio.Queue()
        with self._lock:
            if (mailbox := self._mailboxes.get(loop)) is None:
                mailbox = self._mailboxes[loop] = Mailbox(loop)

        def sink(item: LocalEvent | BaseException | None) -> None:
            mailbox.put(events, item)

        cancelled = self.submit(messages, params, sink, assistant_prefix, session)
        try:
            while (item := await events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()

    def stream_sync(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        assistant_prefix: str = "",
        session: str | None = None,
    ) -> Iterator[LocalEvent]:
        """The same stream for synchronous callers (benchmarks, scripts)."""
        events: queue.SimpleQueue[LocalEvent | BaseException | None] = queue.SimpleQueue()
        cancelled = self.submit(messages, params, events.put, assistant_prefix, session)
        try:
            while (item := events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()

    # -- worker thread ---------------------------------------------------------------------

    def _run(self, delay_s: float) -> None:
        _lower_priority(self._settings.local_nice)
        try:
            if delay_s > 0 and self._wait_for_stop(delay_s):
                return
            self._load()
            while self._next():
                if self.busy:
                    assert self._scheduler is not None
                    self._scheduler.step()
        except BaseException as exc:
            self._worker_died(exc)

    def _next(self) -> bool:
        """Take what the queue holds and admit what fits; False on a stop. Blocks only while
        nothing decodes."""
        while True:
            if self._held is not None:
                if not self._admit(self._held):
                    return True  # no slot yet: it waits while the others decode
                self._held = None
            decoding = self.busy
            try:
                item = (
                    self._queue.get_nowait()
                    if decoding
                    else self._queue.get(timeout=self._idle_timeout())
                )
            except queue.Empty:
                if decoding:
                    return True
                if self._llm is not None:
                    self._unload()  # keep-alive expired
                elif self.state == EngineState.FAILED:
                    self._load()  # the retry is due
                continue
            if item is None:
                self._fail_running(ModelLoadError("The local engine is shutting down."))
                return False
            if item is _WAKE:
                if self._llm is None:
                    self._load()
                continue
            self._held = item

    def _fail_running(self, error: BaseException) -> None:
        """End the decoding jobs and the one waiting for a slot with ``error``."""
        if self._scheduler is not None:
            self._scheduler.fail_all(error)
        if self._held is not None:
            self._held.end(error)
            self._held = None

    def _idle_timeout(self) -> float | None:
        if self._llm is not None:
            return self._settings.keep_alive_s
        if self.state == EngineState.FAILED and self._retry_at is not None:
            return max(0.0, self._retry_at - time.monotonic())
        return None  # cold: wait for a request or a wake-up

    def _wait_for_stop(self, seconds: float) -> bool:
        """Sleep ``seconds`` (a restart's backoff) unless a stop arrives; True if it did."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                return False
            if item is None:
                return True
            if isinstance(item, _Job):
                item.end(self._unavailable())
        return False

    def _worker_died(self, exc: BaseException) -> None:
        """Fail the current and every queued request at once, then restart the worker."""
        log.error(
            "The local engine's worker died (%s: %s); its requests fail, restarting it in %.0f s.",
            type(exc).__name__,
            exc,
            self._retry_s,
        )
        with contextlib.suppress(Exception):
            self._unload()
        self.last_error = f"the worker thread died ({type(exc).__name__}: {exc})"
        error = self._unavailable()
        self._fail_running(error)
        self._llm = self._scheduler = self._prompts = None
        with self._lock:
            self._mark_failed()
            while True:  # a stop (None) in the queue means close() is under way: _stopping
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Job):
                    item.end(error)
            if not self._stopping:
                self._start_worker(delay_s=self._retry_at_delay())

    def _retry_at_delay(self) -> float:
        return 0.0 if self._retry_at is None else max(0.0, self._retry_at - time.monotonic())

    def _mark_failed(self) -> None:
        self.state = EngineState.FAILED
        self._retry_at = time.monotonic() + self._retry_s
        self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)

    def _unavailable(self) -> ModelLoadError:
        return ModelLoadError(f"The local model is unavailable: {self.last_error}")

    def _admit(self, job: _Job) -> bool:
        """Start ``job`` in a free slot, or end it (cancelled, invalid, no model); False when it
        must wait for a slot."""
        if job.cancelled.is_set():
            job.end()
            return True
        if self._llm is None:
            self._load()
            if self._llm is None:
                job.end(self._unavailable())
                return True
        assert self._scheduler is not None
        try:
            if job.prepared is None:
                job.prepared = self._prepare(job)
            return self._scheduler.admit(job, job.prepared)
        except TandemError as exc:
            job.end(exc)
        except Exception as exc:  # a llama.cpp failure must not kill the worker
            job.end(TandemError(f"Local generation failed: {exc}"))
        return True

    def _load(self) -> None:
        self.state = EngineState.LOADING
        started = time.perf_counter()
        s = self._settings
        try:
            self.plan = plan = self._memory_plan()
            llm = LoadedModel(
                self.model_path,
                n_ctx=s.n_ctx,
                n_seq=plan.n_seq,
                n_batch=s.n_batch,
                n_threads=s.n_threads or os.cpu_count() or 1,
                kv_type=ggml_kv_type(s.kv_type),
                flash_attn=needs_flash_attn(s.kv_type),
            )
            self._prompts = PromptBuilder(llm, self._chat_format, self.model_name)
            reader = LogitReader(llm.ctx, llm.model.vocab, llm.n_vocab)
            self._scheduler = Scheduler(llm, reader, self.sessions)
            self._llm = llm
            self._warm_up()
        except Exception as exc:
            if self._llm is not None:
                self._llm.close()
            self._llm = self._scheduler = self._prompts = None
            first = self.last_error != str(exc)
            self.last_error = str(exc)
            with self._lock:
                self._mark_failed()
            # One line when the model goes down; repeats of the same failure stay quiet.
            (log.warning if first else log.debug)(
                "The local model %s failed to load: %s. Requests go to the cloud where allowed; "
                "retrying in %.0f s.",
                self.model_path,
                exc,
                self._retry_at_delay(),
            )
            return
        self.load_time_s = time.perf_counter() - started
        if self.last_error is not None:
            log.info("The local model %s loaded again.", self.model_path)
        self.last_error = None
        self._retry_s = RETRY_FIRST_S
        self._retry_at = None
        self.state = EngineState.READY

    def _memory_plan(self) -> MemoryPlan:
        """The plan for the configured sequences, or the most (up to DEFAULT_PARALLEL) that
        the RAM budget holds; raises when not even one fits."""
        s = self._settings
        budget = None if s.ram_budget_mib is None else int(s.ram_budget_mib * 2**20)
        *larger, last = [s.local_parallel] if s.local_parallel else [DEFAULT_PARALLEL, 2, 1]
        for n_seq in larger:
            plan = plan_memory(self.model_path, s.n_ctx, s.kv_type, s.n_batch, n_seq=n_seq)
            if budget is None or plan.fits(budget):
                return plan
        plan = plan_memory(self.model_path, s.n_ctx, s.kv_type, s.n_batch, n_seq=last)
        check_budget(plan, budget)
        return plan

    def _warm_up(self) -> None:
        """One short generation: touches the weights and allocates the compute buffers."""
        assert self._scheduler is not None
        failed: list[BaseException] = []

        def sink(item: LocalEvent | BaseException | None) -> None:
            if isinstance(item, BaseException):
                failed.append(item)  # the load fails with it, as a failed generation would

        params = GenerationParams(max_tokens=1, temperature=0.0)
        job = _Job([{"role": "user", "content": "Hi"}], params, "", sink)
        if not self._admit(job):
            raise RuntimeError("the warm-up found no free sequence")
        while self._scheduler.active:
            self._scheduler.step()
        if failed:
            raise failed[0]

    def _unload(self) -> None:
        self.sessions.clear()
        if self._llm is not None:
            self._llm.close()
        self._llm = self._scheduler = self._prompts = None
        if self.state == EngineState.READY:
            self.state = EngineState.COLD

    def _prepare(self, job: _Job) -> Prepared:
        assert self._prompts is not None
        return self._prompts.prepare(job.messages, job.params, job.assistant_prefix)


def _lower_priority(increment: int) -> None:
    """Renice the calling thread (Linux: nice is per thread, and the OpenMP threads llama.cpp
    starts from it inherit it). Decoding is CPU-bound on every core; at equal priority, a woken
    event-loop thread can wait a scheduler slice (several ms) behind it. Lowered, the engine
    keeps the CPU whenever the rest of the gateway is idle and yields it when it is not."""
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
