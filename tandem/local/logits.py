"""Reading the current step's logits straight from the llama.cpp context.

llama-cpp-python only reports logprobs with ``logits_all=True``, which keeps n_ctx × n_vocab
floats (about 400 MB for SmolLM2 at 2k context). The chosen token's log-probability needs only
the row of the sampled position, which llama.cpp keeps anyway: this reads it in place, without
copying.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import numpy.typing as npt


class LogitReader:
    """Log-probabilities and token texts for a context and its model's vocabulary."""

    def __init__(self, ctx: Any, vocab: Any, n_vocab: int):
        import llama_cpp

        self._lib = llama_cpp
        self._ctx = ctx
        self._vocab = vocab
        self.n_vocab = n_vocab
        self._pieces: dict[int, bytes] = {}
        self._buf = ctypes.create_string_buffer(256)

    def logits_at(self, row: int) -> npt.NDArray[np.float32]:
        """The logits the last decode computed for batch row ``row`` (a writable view, valid
        until the next decode)."""
        ptr = self._lib.llama_get_logits_ith(self._ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def top(self, logits: npt.NDArray[np.float32], k: int) -> tuple[tuple[str, float], ...]:
        """The k most likely tokens with their log-probabilities, most likely first."""
        ids = np.argpartition(logits, -k)[-k:]
        ids = ids[np.argsort(logits[ids])[::-1]]
        lse = logsumexp(logits)
        return tuple(
            (self.piece(int(i)).decode("utf-8", errors="replace"), float(logits[i]) - lse)
            for i in ids
        )

    def piece(self, token: int) -> bytes:
        """The raw bytes of one token (cached: the vocabulary never changes)."""
        cached = self._pieces.get(token)
        if cached is None:
            n = self._lib.llama_token_to_piece(self._vocab, token, self._buf, 256, 0, False)
            cached = self._pieces[token] = self._buf.raw[: max(n, 0)]
        return cached

    def is_end(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))


def logsumexp(x: npt.NDArray[np.float32]) -> float:
    m = float(x.max())
    return m + float(np.log(np.exp(x - m).sum()))
