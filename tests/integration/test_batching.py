"""Continuous batching on the real SmolLM2: several requests decode together in one context."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tandem.events import Finish, GenerationParams, LocalEvent, TokenEvent
from tandem.local.batch import MIN_SHARED_PREFIX
from tandem.local.engine import LocalEngine
from tests.integration.engines import smollm2_engine

PROMPTS = [
    "Name three rivers in Europe.",
    "What is a prime number?",
    "Write one sentence about the sea.",
    "How do bees make honey?",
]
GREEDY = GenerationParams(max_tokens=24, temperature=0.0, top_logprobs=0)


def make_engine(parallel: int) -> LocalEngine:
    return smollm2_engine(local_parallel=parallel, n_threads=2)


@pytest.fixture(scope="module")
def single() -> Iterator[LocalEngine]:
    e = make_engine(1)
    yield e
    e.close()


@pytest.fixture(scope="module")
def batched() -> Iterator[LocalEngine]:
    e = make_engine(4)
    yield e
    e.close()


@dataclass
class Answer:
    events: list[LocalEvent] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def sink(self, item: LocalEvent | BaseException | None) -> None:
        if isinstance(item, BaseException):
            self.error = item
        if item is None or isinstance(item, BaseException):
            self.done.set()
        else:
            self.events.append(item)

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TokenEvent))

    @property
    def logprobs(self) -> list[float]:
        return [e.logprob for e in self.events if isinstance(e, TokenEvent) and e.logprob]

    @property
    def finish(self) -> Finish:
        assert self.done.wait(60) and self.error is None, self.error
        last = self.events[-1]
        assert isinstance(last, Finish)
        return last


def submit_all(
    engine: LocalEngine, prompts: list[str], params: GenerationParams = GREEDY
) -> list[Answer]:
    """Queue every prompt at once (in order), then wait for all answers."""
    answers = [Answer() for _ in prompts]
    for prompt, answer in zip(prompts, answers, strict=True):
        engine.submit([{"role": "user", "content": prompt}], params, answer.sink)
    for answer in answers:
        answer.finish  # noqa: B018 - waits and checks
    return answers


def test_batched_greedy_answers_equal_one_at_a_time(
    single: LocalEngine, batched: LocalEngine
) -> None:
    alone = [submit_all(single, [p])[0] for p in PROMPTS]
    together = submit_all(batched, PROMPTS)
    for a, t in zip(alone, together, strict=True):
        assert t.text == a.text
        assert t.finish.completion_tokens == a.finish.completion_tokens
        # Bit for bit: a sequence's attention runs over a KV stream of its own, as alone.
        assert t.logprobs == a.logprobs
    # They decoded together: none waited for another to finish.
    assert all(t.finish.timings["queue_s"] < 0.5 * a.finish.timings["decode_s"]
               for t, a in zip(together, alone, strict=True))


def test_a_request_beyond_the_slots_waits_for_one(single: LocalEngine) -> None:
    first, second = submit_all(single, PROMPTS[:2])
    waited = second.finish.timings["queue_s"]
    took = first.finish.timings["prefill_s"] + first.finish.timings["decode_s"]
    assert waited >= 0.8 * took, (waited, took)
    assert first.finish.timings["queue_s"] < 0.2


def test_a_cancelled_request_frees_its_slot_at_the_next_step(single: LocalEngine) -> None:
    tokens: queue.SimpleQueue[LocalEvent | BaseException | None] = queue.SimpleQueue()
    long = GenerationParams(max_tokens=400, temperature=0.0)
    cancel = single.submit([{"role": "user", "content": "Tell me a long story."}], long, tokens.put)
    for _ in range(3):
        assert isinstance(tokens.get(timeout=30), TokenEvent)
    started = time.perf_counter()
    cancel.set()
    (after,) = submit_all(single, [PROMPTS[0]])
    assert after.finish.timings["queue_s"] < 0.25
    assert time.perf_counter() - started < 10
    while (item := tokens.get(timeout=10)) is not None:
        assert not isinstance(item, BaseException)
    assert item is None  # the cancelled stream ended cleanly


def test_a_shared_system_prompt_is_copied_from_a_busy_sequence(
    single: LocalEngine, batched: LocalEngine
) -> None:
    system = "You are a careful assistant for a field team. " * 12
    params = GenerationParams(max_tokens=40, temperature=0.0)
    stats = batched._scheduler.stats  # type: ignore[union-attr]
    before = stats["shared_prefix_tokens"]
    first: queue.SimpleQueue[LocalEvent | BaseException | None] = queue.SimpleQueue()
    ask = [{"role": "system", "content": system}, {"role": "user", "content": PROMPTS[0]}]
    batched.submit(ask, params, first.put)
    assert isinstance(first.get(timeout=30), TokenEvent)  # its prompt is in its cells
    second = Answer()
    ask = [{"role": "system", "content": system}, {"role": "user", "content": PROMPTS[1]}]
    batched.submit(ask, params, second.sink)
    finish = second.finish
    shared = stats["shared_prefix_tokens"] - before
    assert shared >= MIN_SHARED_PREFIX
    assert finish.prefill_tokens is not None and finish.prompt_tokens is not None
    assert finish.prefill_tokens <= finish.prompt_tokens - shared + 1
    assert finish.cached_tokens == finish.prompt_tokens - finish.prefill_tokens
    # The copied cells answer as a prefill would.
    alone = Answer()
    single.submit(ask, params, alone.sink)
    assert alone.finish.prefill_tokens is not None and alone.finish.prefill_tokens > shared
    assert second.text == alone.text


def test_a_follow_up_turn_prefills_only_its_new_tokens_beside_other_streams(
    batched: LocalEngine,
) -> None:
    history = [{"role": "user", "content": "Describe a lighthouse."}]
    first = Answer()
    batched.submit(history, GREEDY, first.sink, session="lighthouse")
    first.finish  # noqa: B018
    history += [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "Shorter, please."},
    ]
    follow = Answer()
    others = [Answer() for _ in range(2)]
    for prompt, other in zip(PROMPTS[2:], others, strict=True):
        batched.submit([{"role": "user", "content": prompt}], GREEDY, other.sink)
    batched.submit(history, GREEDY, follow.sink, session="lighthouse")
    assert follow.finish.prefill_tokens is not None
    assert follow.finish.prefill_tokens <= 20
    for other in others:
        assert other.finish.completion_tokens > 0
