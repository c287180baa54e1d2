"""The decode loop of one generation, run on the engine's worker thread."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tandem.events import Finish, FinishReason, TokenEvent
from tandem.local.logits import LogitReader
from tandem.local.textstream import TextAssembler

if TYPE_CHECKING:
    from tandem.local.constrain import Constraint
    from tandem.local.engine import _Job

# Sampling filters llama.cpp's own server applies by default; OpenAI's temperature/top_p are
# applied on top. Small models ramble without them.
TOP_K = 40
MIN_P = 0.05


def evaluated_tokens(llm: Any) -> int:
    """Tokens llama.cpp has evaluated in this context (prompt + decode), from its counters."""
    import llama_cpp

    perf = llama_cpp.llama_perf_context(llm.ctx)
    return int(perf.n_p_eval) + int(perf.n_eval)


def run_generation(
    llm: Any,
    reader: LogitReader,
    tokens: list[int],
    stops: Sequence[str],
    job: _Job,
    constraint: Constraint | None = None,
) -> None:
    """Generate for ``job``, sending TokenEvents and a final Finish to its sink.

    With a ``constraint`` (structured output) every step samples among the tokens its grammar
    allows, and the answer ends when the document is complete; the stop strings still apply.
    """
    p = job.params
    llm.set_seed(p.seed if p.seed is not None else random.getrandbits(31))
    text = TextAssembler((*stops, *p.stop))
    budget = min(p.max_tokens, llm.n_ctx() - len(tokens))
    evaluated_before = evaluated_tokens(llm)
    started = time.perf_counter()
    first_token_at: float | None = None
    reason: FinishReason = "length"
    complete = False  # the constraint's document ended: its last token is not evaluated
    n = 0
    processors = None
    if constraint is not None:
        import llama_cpp

        processors = llama_cpp.LogitsProcessorList([constraint.mask_logits])
    generator = llm.generate(
        tokens,
        temp=p.temperature,
        top_p=p.top_p,
        top_k=TOP_K if p.top_k is None else p.top_k,
        min_p=MIN_P,
        repeat_penalty=1.0,
        logits_processor=processors,
    )
    for token in generator:
        if first_token_at is None:
            first_token_at = time.perf_counter()
        if job.cancelled.is_set() or reader.is_end(token):
            reason = "stop"
            break
        n += 1
        logits = reader.last_logits()
        piece = reader.piece(token)
        job.sink(
            TokenEvent(
                text=text.feed(piece),
                logprob=reader.logprob(logits, token),
                token=piece.decode("utf-8", errors="replace"),
                top_logprobs=reader.top(logits, p.top_logprobs) if p.top_logprobs else (),
            )
        )
        if text.stopped:
            reason = "stop"
            break
        if constraint is not None:
            if not constraint.accept(token):
                raise ValueError(f"the constrained answer left its grammar: {constraint.error}")
            if constraint.done:
                reason = "stop"
                complete = True
                break
        if n >= budget:
            break
    generator.close()
    tail = text.flush()
    if tail:
        job.sink(TokenEvent(text=tail))
    # The last sampled token is never evaluated: what llama.cpp evaluated beyond the decode
    # steps is the prompt suffix that the KV cache did not already hold.
    evaluated = evaluated_tokens(llm) - evaluated_before
    decoded = max(n - 1, 0) if reason == "length" or text.stopped or complete else n
    ended = time.perf_counter()
    job.sink(
        Finish(
            reason=reason,
            prompt_tokens=len(tokens),
            completion_tokens=n,
            prefill_tokens=evaluated - decoded,
            cached_tokens=max(len(tokens) - (evaluated - decoded), 0),
            timings={
                "prefill_s": (first_token_at or ended) - started,
                "decode_s": ended - (first_token_at or ended),
            },
        )
    )
