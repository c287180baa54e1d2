"""LocalEngine on the real bundled SmolLM2 model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tandem.catalog import resolve_model
from tandem.errors import OverloadedError
from tandem.events import Finish, GenerationParams, TokenEvent
from tandem.local.engine import EngineState, LocalEngine
from tandem.settings import Settings

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "Name a color."}]


@pytest.fixture(scope="module")
def model_path() -> Path:
    return resolve_model("smollm2")[0]


@pytest.fixture(scope="module")
def engine(model_path: Path) -> Iterator[LocalEngine]:
    e = LocalEngine(Settings(n_ctx=1024, keep_alive_s=None), model_path)
    e.start()
    assert e.wait_ready() == EngineState.READY, e.last_error
    yield e
    e.close()


def run(
    engine: LocalEngine, messages: list[dict[str, str]], **kw: object
) -> tuple[list[TokenEvent], Finish]:
    params = GenerationParams(**{"max_tokens": 24, "temperature": 0.0, **kw})  # type: ignore[arg-type]
    events = list(engine.stream_sync(messages, params))
    finish = events[-1]
    assert isinstance(finish, Finish)
    return [e for e in events if isinstance(e, TokenEvent)], finish


def test_streamed_logprobs_match_llama_cpp_logits_all(
    engine: LocalEngine, model_path: Path
) -> None:
    """Our per-step logprobs equal those llama-cpp-python computes with logits_all=True."""
    from llama_cpp import Llama

    tokens, _ = run(engine, QUESTION, max_tokens=8)
    reference = Llama(str(model_path), n_ctx=512, logits_all=True, verbose=False)
    out = reference.create_chat_completion(
        QUESTION, max_tokens=8, temperature=0.0, logprobs=True, top_logprobs=1
    )
    ref = out["choices"][0]["logprobs"]["content"]  # type: ignore[index]
    n = min(len(ref), len(tokens))
    assert n >= 3
    assert [t.token for t in tokens[:n]] == [r["token"] for r in ref[:n]]
    np.testing.assert_allclose(
        [t.logprob for t in tokens[:n]], [r["logprob"] for r in ref[:n]], atol=2e-3
    )


def test_follow_up_turn_prefills_only_new_tokens(engine: LocalEngine) -> None:
    first, f1 = run(engine, QUESTION)
    answer = "".join(t.text for t in first)
    follow = [
        *QUESTION,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And another one?"},
    ]
    _, f2 = run(engine, follow)
    assert f1.prompt_tokens is not None and f2.prompt_tokens is not None
    new = f2.prompt_tokens - (f1.prompt_tokens + f1.completion_tokens)
    assert f2.prefill_tokens is not None
    # llama.cpp's own counters: only the new suffix (plus a token or two at the seam) ran.
    assert f2.prefill_tokens <= new + 3
    assert f2.prefill_tokens < f2.prompt_tokens / 2
    # What the client sees as usage.prompt_tokens_details.cached_tokens: the reused rest.
    assert f2.cached_tokens == f2.prompt_tokens - f2.prefill_tokens
    assert f2.cached_tokens > f2.prompt_tokens / 2


def test_stop_sequences_and_max_tokens(engine: LocalEngine) -> None:
    _, finish = run(engine, QUESTION, max_tokens=5)
    assert finish.completion_tokens <= 5
    text = "".join(t.text for t in run(engine, QUESTION, max_tokens=40)[0])
    assert len(text) > 3
    stop = text[2:4]
    cut, f = run(engine, QUESTION, max_tokens=40, stop=(stop,))
    assert "".join(t.text for t in cut) == text[: text.index(stop)]
    assert f.reason == "stop"


def test_full_queue_is_overloaded(model_path: Path) -> None:
    e = LocalEngine(Settings(n_ctx=256, queue_size=1, keep_alive_s=None), model_path)
    e.start()
    e.wait_ready()
    params = GenerationParams(max_tokens=64, temperature=0.0)
    cancels = []
    with pytest.raises(OverloadedError, match="TANDEM_QUEUE_SIZE"):
        for _ in range(5):
            cancels.append(e.submit(QUESTION, params, lambda _: None))
    for c in cancels:
        c.set()
    e.close()


def test_idle_unload_and_reload_on_demand(model_path: Path) -> None:
    e = LocalEngine(Settings(n_ctx=256, keep_alive_s=0.3), model_path)
    e.start()
    assert e.wait_ready() == EngineState.READY
    deadline = time.monotonic() + 5
    while e.state != EngineState.COLD and time.monotonic() < deadline:
        time.sleep(0.05)
    assert e.state == EngineState.COLD
    tokens, _ = run(e, QUESTION, max_tokens=4)
    assert tokens and e.state == EngineState.READY
    e.close()


def test_structured_answer_continues_another_tiers_layout(engine: LocalEngine) -> None:
    """A cloud answer cut mid-document is continued locally under the same schema, whatever
    whitespace the cloud used: the whole text is one valid document."""
    from tandem.structured import parse_response_format

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    fmt = parse_response_format(
        {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}
    )
    assert fmt is not None
    messages = [{"role": "user", "content": "Extract as JSON: Maria Rossi is 31."}]
    prefix = '{\n    "name": "Maria Rossi",\n'
    params = GenerationParams(max_tokens=32, temperature=0.0, output=fmt)
    events = list(engine.stream_sync(messages, params, assistant_prefix=prefix))
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.reason == "stop"
    rest = "".join(e.text for e in events if isinstance(e, TokenEvent))
    assert fmt.problems(prefix + rest) == [], prefix + rest
    # A fresh answer is written in the one layout the grammar allows.
    fresh = "".join(
        e.text for e in engine.stream_sync(messages, params) if isinstance(e, TokenEvent)
    )
    assert fresh.startswith('{"name": "') and fmt.problems(fresh) == [], fresh
