"""LocalEngine: one llama.cpp context, owned by one worker thread, streaming tokens with logprobs.

Requests queue for the worker (bounded: a full queue is an ``OverloadedError``, HTTP 503).
The model loads in the background; after ``keep_alive_s`` idle seconds it is unloaded and the
next request loads it again. Consecutive prompts reuse the longest common KV-cache prefix
(``Llama.generate`` does the matching), so a follow-up turn prefills only its new tokens.
Requests that name a session switch the context to that session's KV snapshot first
(``SessionCache``), so interleaved conversations do not re-prefill their histories.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from tandem.errors import ContextLengthError, ModelLoadError, OverloadedError, TandemError
from tandem.events import GenerationParams, StreamEvent
from tandem.local.chat import Message, PromptRenderer, RenderedPrompt
from tandem.local.kvstate import SessionCache
from tandem.local.logits import LogitReader
from tandem.local.memory import check_budget, ggml_kv_type, needs_flash_attn, plan_memory
from tandem.settings import Settings

Sink = Callable[[StreamEvent | BaseException | None], None]


class EngineState(StrEnum):
    COLD = "cold"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class _Job:
    messages: Sequence[Message]
    params: GenerationParams
    assistant_prefix: str
    sink: Sink  # receives events, then an exception or None as the end marker
    session: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


class LocalEngine:
    """A GGUF model behind a worker thread. Thread-safe; ``stream`` is the async primitive."""

    def __init__(self, settings: Settings, model_path: Path, chat_format: str | None = None):
        self.model_path = model_path
        self.model_name = model_path.stem
        self._settings = settings
        self._chat_format = chat_format or settings.local_chat_format
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=settings.queue_size)
        self._thread: threading.Thread | None = None
        self._llm: Any = None
        self._renderer: PromptRenderer | None = None
        self._logits: LogitReader | None = None
        self.state = EngineState.COLD
        self.load_time_s: float | None = None
        self.last_error: str | None = None
        self.busy = False
        self.sessions = SessionCache(int(settings.session_state_mib * 2**20))

    @property
    def n_ctx(self) -> int:
        return self._settings.n_ctx

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() + int(self.busy)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker; the model loads in the background (state ``loading``)."""
        if self._thread is None:
            self.state = EngineState.LOADING
            self._thread = threading.Thread(target=self._run, name="tandem-local", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None
        self._unload()

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
            "queue_depth": self.queue_depth,
            "last_error": self.last_error,
        }

    # -- requests --------------------------------------------------------------------------

    def count_tokens(self, messages: Sequence[Message]) -> int | None:
        """Prompt length in tokens, or None while the model is not loaded."""
        llm, renderer = self._llm, self._renderer
        if llm is None or renderer is None:
            return None
        return len(_tokenize(llm, renderer.render(messages)))

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
            raise ModelLoadError(f"The local model failed to load: {self.last_error}")
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
    ) -> AsyncIterator[StreamEvent]:
        """Stream a generation; closing the iterator early cancels it."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StreamEvent | BaseException | None] = asyncio.Queue()

        def sink(item: StreamEvent | BaseException | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

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
    ) -> Iterator[StreamEvent]:
        """The same stream for synchronous callers (benchmarks, scripts)."""
        events: queue.SimpleQueue[StreamEvent | BaseException | None] = queue.SimpleQueue()
        cancelled = self.submit(messages, params, events.put, assistant_prefix, session)
        try:
            while (item := events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()

    # -- worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        self._load()
        while True:
            timeout = self._settings.keep_alive_s if self._llm is not None else None
            try:
                job = self._queue.get(timeout=timeout)
            except queue.Empty:
                self._unload()
                continue
            if job is None:
                return
            self._serve(job)

    def _serve(self, job: _Job) -> None:
        if job.cancelled.is_set():
            job.sink(None)
            return
        if self._llm is None:
            self._load()
            if self._llm is None:
                job.sink(ModelLoadError(f"The local model failed to load: {self.last_error}"))
                return
        self.busy = True
        try:
            self._generate(job)
            job.sink(None)
        except TandemError as exc:
            job.sink(exc)
        except Exception as exc:  # a llama.cpp failure must not kill the worker
            job.sink(TandemError(f"Local generation failed: {exc}"))
        finally:
            self.busy = False

    def _load(self) -> None:
        from llama_cpp import Llama

        self.state = EngineState.LOADING
        started = time.perf_counter()
        s = self._settings
        try:
            plan = plan_memory(self.model_path, s.n_ctx, s.kv_type, s.n_batch)
            budget = None if s.ram_budget_mib is None else int(s.ram_budget_mib * 2**20)
            check_budget(plan, budget)
            kv = ggml_kv_type(s.kv_type)
            llm = Llama(
                model_path=str(self.model_path),
                n_ctx=s.n_ctx,
                n_batch=s.n_batch,
                n_threads=s.n_threads or os.cpu_count(),
                type_k=kv,
                type_v=kv,
                flash_attn=needs_flash_attn(s.kv_type),
                use_mmap=True,
                verbose=False,
            )
            self._renderer = PromptRenderer.for_model(llm, self._chat_format)
            self._logits = LogitReader(llm)
            self._llm = llm
            self._warm_up()
        except Exception as exc:
            self._llm = None
            self.state = EngineState.FAILED
            self.last_error = str(exc)
            return
        self.load_time_s = time.perf_counter() - started
        self.state = EngineState.READY

    def _warm_up(self) -> None:
        """One short generation: touches the weights and allocates the compute buffers."""
        params = GenerationParams(max_tokens=1, temperature=0.0)
        self._generate(_Job([{"role": "user", "content": "Hi"}], params, "", lambda _: None))

    def _unload(self) -> None:
        self.sessions.clear()
        if self._llm is not None:
            self._llm.close()
        self._llm = self._renderer = self._logits = None
        if self.state == EngineState.READY:
            self.state = EngineState.COLD

    def _generate(self, job: _Job) -> None:
        from tandem.local.decode import run_generation

        assert self._llm is not None and self._renderer is not None and self._logits is not None
        self.sessions.switch(self._llm, job.session)
        prompt = self._renderer.render(job.messages, job.assistant_prefix)
        tokens = _tokenize(self._llm, prompt)
        if len(tokens) >= self.n_ctx:
            raise ContextLengthError(
                f"The prompt is {len(tokens)} tokens; the local context window is "
                f"{self.n_ctx}. Shorten the conversation or raise TANDEM_N_CTX.",
                param="messages",
            )
        run_generation(self._llm, self._logits, tokens, prompt.stops, job)


def _tokenize(llm: Any, prompt: RenderedPrompt) -> list[int]:
    return list(llm.tokenize(prompt.text.encode("utf-8"), add_bos=prompt.add_bos, special=True))
