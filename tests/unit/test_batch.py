"""The batch scheduler's admission: which slot a request gets, what it reuses, what it evicts.

The model is a test double that records the KV-cache calls; decoding is tested on the real
model in tests/integration/test_batching.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tandem.events import GenerationParams
from tandem.local import batch as batch_module
from tandem.local.batch import MIN_SHARED_PREFIX, Prepared, Scheduler, common_prefix
from tandem.local.engine import _Job
from tandem.local.kvstate import SessionCache, Snapshot
from tandem.local.model import Batch


class FakeModel(SimpleNamespace):
    def __init__(self, n_seq: int, n_ctx: int = 256):
        super().__init__(n_seq=n_seq, n_ctx=n_ctx, n_batch=64, ctx=object(), calls=[])

    def clear(self, seq: int, start: int = 0) -> None:
        self.calls.append(("clear", seq, start))

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        self.calls.append(("copy", source, target, length))


def job(session: str | None = None, max_tokens: int = 8) -> _Job:
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
    return _Job([], params, "", lambda _: None, session)


def scheduler(n_seq: int, n_ctx: int = 256, state_bytes: int = 0) -> Scheduler:
    return Scheduler(FakeModel(n_seq, n_ctx), reader=None, sessions=SessionCache(state_bytes))  # type: ignore[arg-type]


def admit(s: Scheduler, tokens: list[int], j: _Job | None = None) -> Any:
    j = j or job()
    assert s.admit(j, Prepared(tokens, (), None))
    slot = next(x for x in s.slots if x.generation is not None and x.generation.job is j)
    return slot


def finish(s: Scheduler, slot: Any) -> None:
    """What a finished generation leaves: its evaluated tokens stay in the slot's cells."""
    g = slot.generation
    slot.tokens.extend(g.pending)
    g.pending.clear()
    s._release(slot)


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0


def test_a_request_goes_to_the_slot_holding_the_longest_prefix_of_its_prompt() -> None:
    s = scheduler(3)
    n = MIN_SHARED_PREFIX + 4
    a = admit(s, list(range(n)))
    finish(s, a)
    b = admit(s, [1000 + i for i in range(30)])
    finish(s, b)
    follow_up = admit(s, [*range(n), 50, 51])
    assert follow_up is a
    # The common prefix is not evaluated again; the rest of the prompt is.
    assert follow_up.generation.pending == [50, 51]
    assert follow_up.tokens == list(range(n))


def test_without_a_reusable_prefix_the_slot_keeps_the_decoding_ids_consecutive() -> None:
    s = scheduler(5)
    slots = [admit(s, [i, 1, 2]) for i in range(3)]
    assert [slot.seq for slot in slots] == [0, 1, 2]
    finish(s, slots[1])
    # A short common prefix (the chat template's opening) is not worth a gap in the ids:
    # llama.cpp decodes a run of consecutive sequence ids in one pass.
    again = admit(s, [7, 1, 9])
    assert again.seq == 1


def test_the_last_prompt_token_is_always_evaluated_again() -> None:
    s = scheduler(1)
    finish(s, admit(s, list(range(10))))
    again = admit(s, list(range(10)))
    assert again.generation.pending == [9]  # its logits are needed to sample
    assert ("clear", 0, 9) in s.model.calls


def test_a_session_gets_its_own_slot_back_before_a_longer_prefix() -> None:
    s = scheduler(2)
    mine = admit(s, [7, 8, 9], job("mine"))
    finish(s, mine)
    other = admit(s, list(range(20)))
    finish(s, other)
    back = admit(s, [*range(20), 1], job("mine"))
    assert back is mine


def test_a_new_session_takes_a_free_slot_and_copies_another_sessions_prefix() -> None:
    s = scheduler(2)
    system = list(range(MIN_SHARED_PREFIX + 4))
    owned = admit(s, [*system, 1], job("a"))
    finish(s, owned)
    other = admit(s, [*system, 2], job("b"))
    assert other is not owned and owned.session == "a"
    assert ("copy", owned.seq, other.seq, len(system)) in s.model.calls


def test_a_prefix_another_slot_holds_is_copied_not_prefilled() -> None:
    s = scheduler(2)
    system = list(range(MIN_SHARED_PREFIX + 4))
    busy = admit(s, [*system, 1000], job(max_tokens=50))
    busy.tokens.extend(busy.generation.pending)  # prefilled, still decoding
    busy.generation.pending.clear()
    second = admit(s, [*system, 2000, 2001])
    assert second is not busy
    assert ("copy", busy.seq, second.seq, len(system)) in s.model.calls
    assert second.generation.pending == [2000, 2001]
    assert s.stats["shared_prefix_tokens"] == len(system)


def test_a_short_shared_prefix_is_prefilled() -> None:
    s = scheduler(2)
    busy = admit(s, [1, 2, 3, 4], job(max_tokens=50))
    busy.tokens.extend(busy.generation.pending)
    busy.generation.pending.clear()
    second = admit(s, [1, 2, 3, 9])
    assert not any(c[0] == "copy" for c in s.model.calls)
    assert second.generation.pending == [1, 2, 3, 9]


def test_a_request_that_supersedes_a_cancelled_one_gets_its_slot_and_prefix() -> None:
    s = scheduler(2)
    old = admit(s, list(range(40)))
    old.tokens.extend(old.generation.pending)
    old.generation.pending.clear()
    old.generation.job.cancelled.set()  # the editor typed a character
    new = admit(s, [*range(40), 40])
    assert new is old and new.generation.pending == [40]


def test_a_request_waits_while_every_slot_decodes() -> None:
    s = scheduler(2)
    first, second = admit(s, [1]), admit(s, [2])
    waiting = job()
    assert not s.admit(waiting, Prepared([3], (), None))
    assert s.active == 2
    finish(s, first)
    assert s.admit(waiting, Prepared([3], (), None))
    assert second.generation is not None


def test_a_session_that_loses_its_slot_is_snapshotted_and_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    captured: list[tuple[int, list[int]]] = []

    def capture(ctx: object, seq: int, tokens: list[int]) -> Snapshot:
        captured.append((seq, list(tokens)))
        return Snapshot(np.array(tokens, dtype=np.intc), np.zeros(10, dtype=np.uint8))

    monkeypatch.setattr(batch_module, "capture", capture)
    monkeypatch.setattr(batch_module, "restore", lambda ctx, seq, snap: True)
    s = scheduler(1, state_bytes=10_000)
    first = admit(s, [1, 2, 3], job("a"))
    finish(s, first)
    finish(s, admit(s, [9, 9], job("b")))  # takes a's slot: a goes to a snapshot
    assert captured == [(0, [1, 2, 3])] and "a" in s.sessions
    back = admit(s, [1, 2, 3, 4], job("a"))
    assert back.tokens == [1, 2, 3] and back.generation.pending == [4]
    assert "a" not in s.sessions and "b" in s.sessions


def test_a_forgotten_session_loses_its_idle_cells() -> None:
    s = scheduler(2)
    slot = admit(s, [1, 2, 3], job("gone"))
    finish(s, slot)
    s.sessions.forget("gone")
    again = admit(s, [1, 2, 3, 4], job("gone"))
    assert again.generation.pending == [1, 2, 3, 4]


def test_the_engine_decodes_fewer_sequences_when_the_ram_budget_is_tight() -> None:
    from tandem.catalog import resolve_model
    from tandem.local.engine import LocalEngine
    from tandem.local.memory import plan_memory
    from tandem.settings import Settings

    path, fmt = resolve_model("smollm2")
    two, four = (plan_memory(path, 2048, flash_attn=False, n_seq=n) for n in (2, 4))
    budget = (two.total_bytes + four.total_bytes) / 2 / 2**20
    engine = LocalEngine(Settings(n_ctx=2048, ram_budget_mib=budget), path, fmt)
    assert engine._memory_plan().n_seq == 2
    roomy = LocalEngine(Settings(n_ctx=2048), path, fmt)
    assert roomy._memory_plan().n_seq == 4
    pinned = LocalEngine(Settings(n_ctx=2048, local_parallel=3), path, fmt)
    assert pinned._memory_plan().n_seq == 3


def test_a_batch_row_is_the_last_token_of_each_run() -> None:
    b = Batch(8)
    assert b.add([5, 6, 7], start=10, seq=1, last_logits=True) == 2
    assert b.add([8], start=3, seq=0, last_logits=True) == 3
    assert b.add([9, 10], start=0, seq=2, last_logits=False) == 5
    assert b.room == 2
    assert list(b.positions[:6]) == [10, 11, 12, 3, 0, 1]
    assert list(b.seq_ids[:6]) == [1, 1, 1, 0, 2, 2]
    assert list(b.logits[:6]) == [0, 0, 1, 1, 0, 0]
    # Each token's seq_id pointer points at its own entry of the one column.
    assert b.struct.seq_id[4][0] == 2


# -- the step: prefill and decode take turns ------------------------------------------------


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[dict[int, int]]:
    """Each decoded batch as {sequence: tokens}; every computed row samples token 7."""
    decoded: list[dict[int, int]] = []

    def decode(self: Batch, ctx: Any) -> int:
        seqs = [int(x) for x in self.seq_ids[: self.n]]
        decoded.append({seq: seqs.count(seq) for seq in dict.fromkeys(seqs)})
        return 0

    def sample(self: Scheduler, slot: Any, g: Any) -> None:
        g.n += 1
        g.next_token = 7

    monkeypatch.setattr(Batch, "decode", decode)
    monkeypatch.setattr(Scheduler, "_sample", sample)
    return decoded


def test_a_prompt_that_arrives_while_others_decode_gets_a_step_of_its_own(
    steps: list[dict[int, int]],
) -> None:
    s = scheduler(3)
    a, b = admit(s, [1] * 5), admit(s, [2] * 5)
    s.step()  # both prompts, together
    s.step()  # their first decoded tokens
    c = admit(s, [3] * 10)
    s.step()
    s.step()
    assert steps == [
        {a.seq: 5, b.seq: 5},
        {a.seq: 1, b.seq: 1},
        {c.seq: 10},  # not behind a's and b's next tokens
        {a.seq: 1, b.seq: 1, c.seq: 1},
    ]


def test_a_long_prompt_is_prefilled_in_chunks_between_the_streams_tokens(
    steps: list[dict[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_module, "PREFILL_CHUNK", 16)
    s = scheduler(2)
    a = admit(s, [1] * 4)
    s.step()
    b = admit(s, [2] * 40)
    for _ in range(6):
        s.step()
    assert steps[1:] == [
        {b.seq: 16}, {a.seq: 1}, {b.seq: 16}, {a.seq: 1}, {b.seq: 8}, {a.seq: 1, b.seq: 1}
    ]


def test_with_no_stream_decoding_a_prompt_fills_the_whole_batch(
    steps: list[dict[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_module, "PREFILL_CHUNK", 16)
    s = scheduler(2)  # n_batch 64
    a = admit(s, [1] * 100)
    s.step()
    s.step()
    s.step()
    assert steps == [{a.seq: 64}, {a.seq: 36}, {a.seq: 1}]
