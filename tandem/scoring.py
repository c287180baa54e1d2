"""Scoring text with a GGUF model through llama.cpp: per-position log-probabilities.

The metrics (perplexity, KL divergence, multiple-choice log-likelihood) need the full next-token
distribution at many positions, which llama-cpp-python's completion API does not expose. A
``Scorer`` holds one llama.cpp context with logits for every position and hands them back as
log-softmax rows; the metric code in ``metrics.py`` is plain numpy over those rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tandem.errors import ConfigError

FloatArray = npt.NDArray[np.float32]


def log_softmax(logits: FloatArray) -> FloatArray:
    """Row-wise log-softmax in float32 (float64 accumulation for the normaliser)."""
    top = logits.max(axis=-1, keepdims=True)
    shifted = logits - top
    norm = np.log(np.exp(shifted, dtype=np.float64).sum(axis=-1, keepdims=True))
    out: FloatArray = (shifted - norm).astype(np.float32)
    return out


def _drop_log(level: int, text: bytes, user_data: Any) -> None:
    return None


_DROP_LOG: Any = None  # the ctypes callback must outlive every call llama.cpp makes to it


@contextmanager
def quiet_llama() -> Iterator[None]:
    """Silence llama.cpp's own logging (model loader dumps) for the duration."""
    global _DROP_LOG
    import llama_cpp
    from llama_cpp import _logger

    if _DROP_LOG is None:
        _DROP_LOG = llama_cpp.llama_log_callback(_drop_log)
    llama_cpp.llama_log_set(_DROP_LOG, None)
    try:
        yield
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, None)


class Scorer:
    """One GGUF model in a llama.cpp context that keeps the logits of every position."""

    def __init__(self, path: Path, *, n_ctx: int = 512, n_threads: int | None = None):
        from llama_cpp import Llama

        if not path.is_file():
            raise ConfigError(f"No model file at {path}.", param="model")
        self.path = path
        with quiet_llama():
            try:
                self.llm = Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_batch=n_ctx,
                    n_ubatch=n_ctx,
                    n_threads=n_threads or os.cpu_count(),
                    logits_all=True,
                    verbose=False,
                )
            except ValueError as exc:
                raise ConfigError(
                    f"llama.cpp could not load {path}: {exc}. Is it a GGUF model file?",
                    param="model",
                ) from exc
        self.n_ctx = n_ctx
        self.n_vocab: int = self.llm.n_vocab()
        self.add_bos: bool = bool(self.llm._model.add_bos_token())
        self.bos: int = int(self.llm.token_bos())

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Tokens of ``text``; ``special`` adds BOS when the model asks for it."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=special and self.add_bos))

    def logprobs(self, tokens: Sequence[int]) -> FloatArray:
        """Log-probabilities of the next token at every position of ``tokens`` (fresh context)."""
        if len(tokens) > self.n_ctx:
            raise ConfigError(f"{len(tokens)} tokens do not fit the scoring context {self.n_ctx}.")
        self.llm.reset()  # type: ignore[no-untyped-call]
        self.llm.eval(list(tokens))
        return log_softmax(self.llm.scores[: len(tokens)])

    def continuation_logprob(self, context: Sequence[int], continuations: Sequence[Sequence[int]]
                             ) -> list[float]:
        """Sum of log P(continuation | context) for each continuation, sharing the context.

        The context is evaluated once; each continuation then reuses its KV cells (the cache is
        cut back to the context before each one), so an n-way question costs one context pass.
        """
        ctx = list(context)
        longest = max((len(c) for c in continuations), default=0)
        if not ctx or len(ctx) + longest > self.n_ctx:
            # Keep the end of an over-long context: it is what predicts the continuation.
            keep = self.n_ctx - longest
            if keep < 1:
                raise ConfigError(f"A continuation of {longest} tokens does not fit {self.n_ctx}.")
            ctx = ctx[-keep:] if ctx else [self.bos]
        self.llm.reset()  # type: ignore[no-untyped-call]
        self.llm.eval(ctx)
        first = log_softmax(self.llm.scores[len(ctx) - 1 : len(ctx)])[0]
        out: list[float] = []
        for cont in continuations:
            cont = list(cont)
            if not cont:
                out.append(0.0)
                continue
            total = float(first[cont[0]])
            if len(cont) > 1:
                self.llm.n_tokens = len(ctx)
                self.llm.eval(cont[:-1])
                rows = log_softmax(self.llm.scores[len(ctx) : len(ctx) + len(cont) - 1])
                total += float(rows[np.arange(len(cont) - 1), cont[1:]].sum())
            out.append(total)
        return out

    def close(self) -> None:
        self.llm.close()
