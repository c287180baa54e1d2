"""Quality metrics over log-probability rows: perplexity, KL divergence, multiple choice.

Perplexity follows llama.cpp's ``llama-perplexity`` protocol so the numbers can be compared with
it: the text is tokenized once (with BOS when the model adds one), cut into non-overlapping
chunks of ``n_ctx`` tokens (a trailing partial chunk is dropped), the first token of each chunk
is replaced by BOS when the model uses one, and only the second half of each chunk is scored
(positions ``n_ctx/2 .. n_ctx-2`` predict the next token), so every scored token has at least
``n_ctx/2`` tokens of context. KL divergence (``--kl-divergence`` in llama.cpp) is taken at the
same positions, from the reference model's distribution to the evaluated model's, streamed one
chunk at a time so no logits file is ever written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


class RowScorer(Protocol):
    """What the metrics need from a model: next-token log-probabilities for a chunk."""

    n_ctx: int
    add_bos: bool
    bos: int

    def logprobs(self, tokens: Sequence[int]) -> FloatArray: ...


def chunks(tokens: Sequence[int], n_ctx: int, *, bos: int | None, limit: int | None = None
           ) -> list[list[int]]:
    """llama-perplexity's chunks: whole ``n_ctx`` windows, first token replaced by ``bos``."""
    n = len(tokens) // n_ctx
    if limit is not None:
        n = min(n, limit)
    out = []
    for i in range(n):
        chunk = list(tokens[i * n_ctx : (i + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        out.append(chunk)
    return out


@dataclass
class StreamStats:
    """Accumulates per-token NLL, and KLD / top-token agreement when a reference is given."""

    nll: list[float] = field(default_factory=list)
    kld: list[float] = field(default_factory=list)
    same_top: int = 0
    n_chunks: int = 0

    def add(self, rows: FloatArray, targets: Sequence[int], ref_rows: FloatArray | None) -> None:
        idx = np.arange(len(targets))
        self.nll.extend((-rows[idx, np.asarray(targets)]).astype(np.float64).tolist())
        if ref_rows is not None:
            p_ref = np.exp(ref_rows.astype(np.float64))
            kl = (p_ref * (ref_rows.astype(np.float64) - rows.astype(np.float64))).sum(axis=1)
            # Tiny negative values are float noise around an exact match.
            self.kld.extend(np.maximum(kl, 0.0).tolist())
            self.same_top += int((rows.argmax(axis=1) == ref_rows.argmax(axis=1)).sum())
        self.n_chunks += 1

    def perplexity(self) -> dict[str, float | int]:
        nll = np.asarray(self.nll)
        mean = float(nll.mean())
        # Standard error of exp(mean NLL) by the delta method, as llama-perplexity prints it.
        spread = float(nll.std(ddof=1)) if len(nll) > 1 else 0.0
        stderr = math.exp(mean) * spread / math.sqrt(len(nll))
        return {"ppl": math.exp(mean), "stderr": stderr, "mean_nll": mean,
                "n_chunks": self.n_chunks, "n_scored": len(nll)}

    def divergence(self) -> dict[str, float | int] | None:
        if not self.kld:
            return None
        kld = np.asarray(self.kld)
        return {"mean": float(kld.mean()),
                "stderr": float(kld.std(ddof=1) / math.sqrt(len(kld))) if len(kld) > 1 else 0.0,
                "median": float(np.median(kld)), "p99": float(np.percentile(kld, 99)),
                "max": float(kld.max()), "same_top": self.same_top / len(kld),
                "n_tokens": len(kld)}


def perplexity_and_kld(
    model: RowScorer,
    tokens: Sequence[int],
    *,
    reference: RowScorer | None = None,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StreamStats:
    """Run the chunks through ``model`` (and ``reference``, one chunk at a time)."""
    n_ctx = model.n_ctx
    todo = chunks(tokens, n_ctx, bos=model.bos if model.add_bos else None, limit=limit)
    if not todo:
        raise ValueError(f"The text has fewer than {n_ctx} tokens: nothing to score.")
    first = n_ctx // 2
    stats = StreamStats()
    for i, chunk in enumerate(todo):
        rows = model.logprobs(chunk)[first : n_ctx - 1]
        ref_rows = None if reference is None else reference.logprobs(chunk)[first : n_ctx - 1]
        stats.add(rows, chunk[first + 1 :], ref_rows)
        if progress is not None:
            progress(i + 1, len(todo))
    return stats


# -- multiple choice ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """One multiple-choice item: a query, its choices, the index of the right one."""

    query: str
    choices: tuple[str, ...]
    gold: int

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Choice:
        return cls(str(item["query"]), tuple(str(c) for c in item["choices"]), int(item["gold"]))

    def context(self) -> str:
        return f"{self.query.rstrip()}\nAnswer:"

    def continuations(self) -> list[str]:
        return [f" {c.strip()}" for c in self.choices]


def choose(logliks: Sequence[float], continuations: Sequence[str]) -> tuple[int, int]:
    """(raw choice, length-normalised choice): argmax of log-likelihood, and of it per byte."""
    raw = int(np.argmax(logliks))
    per_byte = [ll / max(len(c.encode("utf-8")), 1) for ll, c in zip(logliks, continuations,
                                                                     strict=True)]
    return raw, int(np.argmax(per_byte))


def accuracy(results: Iterable[tuple[int, int, int]]) -> dict[str, float | int]:
    """From (gold, raw choice, normalised choice) triples: acc (normalised), acc_raw, stderr."""
    rows = list(results)
    n = len(rows)
    if n == 0:
        return {"acc": float("nan"), "acc_raw": float("nan"), "stderr": float("nan"), "n": 0}
    acc = sum(g == norm for g, _, norm in rows) / n
    acc_raw = sum(g == raw for g, raw, _ in rows) / n
    return {"acc": acc, "acc_raw": acc_raw, "stderr": math.sqrt(acc * (1 - acc) / n), "n": n}
