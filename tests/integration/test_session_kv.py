"""Per-session KV snapshots on the real SmolLM2: switching sessions without re-prefilling."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tandem.events import Finish, GenerationParams, TokenEvent
from tandem.local.engine import LocalEngine
from tests.integration.engines import smollm2_engine

TOPICS = {
    "a": "Tell me about the history of Rome.",
    "b": "Explain how photosynthesis works.",
    "c": "What makes Python code easy to read?",
}
GREEDY = GenerationParams(max_tokens=20, temperature=0.0)


def make_engine(state_mib: float, parallel: int = 1) -> LocalEngine:
    """One sequence unless asked: sessions then share it, and switching needs a snapshot."""
    return smollm2_engine(session_state_mib=state_mib, local_parallel=parallel)


@pytest.fixture(scope="module")
def engine() -> Iterator[LocalEngine]:
    e = make_engine(64)
    yield e
    e.close()


def turn(engine: LocalEngine, history: list[dict[str, str]], session: str | None) -> Finish:
    events = list(engine.stream_sync(history, GREEDY, session=session))
    history.append(
        {
            "role": "assistant",
            "content": "".join(e.text for e in events if isinstance(e, TokenEvent)),
        }
    )
    finish = events[-1]
    assert isinstance(finish, Finish)
    return finish


def interleave(engine: LocalEngine, rounds: int) -> tuple[dict[str, list], list[Finish]]:
    histories: dict[str, list[dict[str, str]]] = {k: [] for k in TOPICS}
    finishes = []
    for r in range(rounds):
        for key, topic in TOPICS.items():
            histories[key].append({"role": "user", "content": topic if r == 0 else "Go on."})
            finishes.append(turn(engine, histories[key], f"kv-{key}-{id(engine)}"))
    return histories, finishes


def test_interleaved_sessions_prefill_only_their_new_tokens(engine: LocalEngine) -> None:
    _, finishes = interleave(engine, rounds=3)
    follow_ups = finishes[len(TOPICS) :]
    for f in follow_ups:
        assert f.prefill_tokens is not None and f.prompt_tokens is not None
        # "Go on." with its chat-template framing is about 15 tokens.
        assert f.prefill_tokens <= 20, (f.prefill_tokens, f.prompt_tokens)
        assert f.prompt_tokens > 40
    assert engine.sessions.stats["restores"] >= len(follow_ups)


def test_a_restored_session_answers_as_a_fresh_context_would(engine: LocalEngine) -> None:
    histories, _ = interleave(engine, rounds=2)
    fresh = make_engine(0)
    try:
        for history in histories.values():
            replay = history[:-1]
            turn(fresh, replay, None)
            assert replay[-1]["content"] == history[-1]["content"]
    finally:
        fresh.close()


def test_without_a_state_budget_switching_re_prefills_the_history() -> None:
    engine = make_engine(0)
    try:
        _, finishes = interleave(engine, rounds=2)
        for f in finishes[len(TOPICS) :]:
            assert f.prefill_tokens is not None and f.prompt_tokens is not None
            # Only the shared system prompt survives a switch.
            assert f.prefill_tokens > f.prompt_tokens - 40
    finally:
        engine.close()


def test_with_a_sequence_each_sessions_keep_their_cells_without_snapshots() -> None:
    engine = make_engine(0, parallel=len(TOPICS))
    try:
        _, finishes = interleave(engine, rounds=2)
        for f in finishes[len(TOPICS) :]:
            assert f.prefill_tokens is not None and f.prompt_tokens is not None
            assert f.prefill_tokens <= 20, (f.prefill_tokens, f.prompt_tokens)
        assert engine.sessions.stats["saves"] == 0
        assert engine.sessions.stats["live"] >= len(TOPICS)
    finally:
        engine.close()


def test_forgetting_the_live_session_clears_its_cache(engine: LocalEngine) -> None:
    history = [{"role": "user", "content": "Name three rivers."}]
    turn(engine, history, "forget-me")
    engine.forget("forget-me")
    history.append({"role": "user", "content": "And two more."})
    finish = turn(engine, history, "forget-me")
    assert finish.prefill_tokens == finish.prompt_tokens  # nothing reused
    assert "forget-me" not in engine.sessions
