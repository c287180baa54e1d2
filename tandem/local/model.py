"""A loaded GGUF model and one llama.cpp context with several sequences (slots).

llama-cpp-python's ``Llama`` creates its context with one sequence and decodes in sequence 0
only (its issue #771), so the engine builds the context itself from the same low-level
wrappers (``llama_cpp._internals``): ``n_seq_max`` sequences, each with a KV stream of its own
of ``n_ctx`` cells (``kv_unified = false``, as llama.cpp's server does by default), so each
sequence has the whole per-request window and a shared prompt prefix is copied between
sequences (``llama_memory_seq_cp``), not prefilled again.

Not one unified cache: there the sequences' cells interleave, attention sums each sequence's
cells in other SIMD lanes than a context of its own would, and greedy answers under batching
drift from single-sequence answers (measured on SmolLM2: one answer in four changed at its
16th token). With a stream each, a sequence's attention is computed over the same cells in the
same order as alone.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Any

import numpy as np

_backend_ready = threading.Lock()
_backend_initialized = False


def _init_backend() -> None:
    global _backend_initialized
    import llama_cpp
    from llama_cpp._logger import set_verbose

    with _backend_ready:
        if not _backend_initialized:
            set_verbose(False)  # llama.cpp's log lines go through llama-cpp-python's logger
            llama_cpp.llama_backend_init()
            _backend_initialized = True


class LoadedModel:
    """Weights, vocabulary and a context of ``n_seq`` sequences of ``n_ctx`` tokens each."""

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int,
        n_seq: int,
        n_batch: int,
        n_threads: int,
        kv_type: int,
        flash_attn: bool,
    ):
        import llama_cpp
        from llama_cpp._internals import LlamaContext, LlamaModel

        _init_backend()
        model_params = llama_cpp.llama_model_default_params()
        model_params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
        self.model: Any = LlamaModel(path_model=str(path), params=model_params, verbose=False)
        try:
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = n_ctx * n_seq
            params.n_batch = n_batch
            params.n_ubatch = min(n_batch, 512)
            params.n_seq_max = n_seq
            params.kv_unified = False  # a KV stream per sequence: see the module docstring
            params.n_threads = params.n_threads_batch = n_threads
            params.type_k = params.type_v = kv_type
            # Off unless a quantized V cache needs it. Its CPU kernel is faster here (SmolLM2,
            # one stream: 1.2-1.5x) but computes a query differently depending on how the
            # prompt was split into batches, so an answer from a reused, copied or chunked
            # prefix would drift from the same answer prefilled at once (measured: a copied
            # system prompt changed a greedy answer), as with llamafile's tinyBLAS (Makefile).
            params.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if flash_attn
                else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
            self._context: Any = LlamaContext(model=self.model, params=params, verbose=False)
        except BaseException:
            self.model.close()  # type: ignore[no-untyped-call]
            raise
        self.ctx = self._context.ctx
        self.memory = self._context.memory
        self.n_ctx = n_ctx  # the window of one sequence
        self.n_seq = n_seq
        self.n_batch = n_batch
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self.model.vocab)

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        return list(self.model.tokenize(text, add_bos=add_bos, special=special))

    def clear(self, seq: int, start: int = 0) -> None:
        """Drop sequence ``seq``'s cells from position ``start`` on."""
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.memory, seq, start, -1)

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Make ``target`` hold ``source``'s first ``length`` positions. Across streams
        llama.cpp copies a whole sequence only (at the next decode), so the copy is trimmed."""
        import llama_cpp

        llama_cpp.llama_memory_seq_cp(self.memory, source, target, -1, -1)
        llama_cpp.llama_memory_seq_rm(self.memory, target, length, -1)

    def close(self) -> None:
        self._context.close()
        self.model.close()


class Batch:
    """One reusable ``llama_batch`` whose arrays are numpy buffers, filled a run at a time.

    ``llama_batch_init`` allocates a separate ``seq_id`` array per token, which Python can only
    fill one token at a time; here every token's ``seq_id`` pointer points into one column, so
    a prompt chunk is written with a few slice assignments.
    """

    def __init__(self, capacity: int):
        import llama_cpp

        self.capacity = capacity
        self.tokens = np.zeros(capacity, dtype=np.int32)
        self.positions = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq_ids = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        i32 = ctypes.POINTER(ctypes.c_int32)
        row = self.seq_ids.ctypes.data
        self._seq_ptrs = (i32 * capacity)(
            *(ctypes.cast(row + 4 * i, i32) for i in range(capacity))
        )
        self.struct = llama_cpp.llama_batch(
            n_tokens=0,
            token=self.tokens.ctypes.data_as(i32),
            embd=None,
            pos=self.positions.ctypes.data_as(i32),
            n_seq_id=self.n_seq_id.ctypes.data_as(i32),
            seq_id=self._seq_ptrs,
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )
        self.n = 0

    @property
    def room(self) -> int:
        return self.capacity - self.n

    def clear(self) -> None:
        self.n = 0

    def add(self, tokens: list[int], start: int, seq: int, last_logits: bool) -> int:
        """Append ``tokens`` at positions ``start...`` of ``seq``; returns the row of the last
        token, whose logits are computed when ``last_logits``."""
        n, end = self.n, self.n + len(tokens)
        assert len(tokens) > 0 and end <= self.capacity
        self.tokens[n:end] = tokens
        self.positions[n:end] = np.arange(start, start + len(tokens), dtype=np.int32)
        self.seq_ids[n:end] = seq
        self.logits[n:end] = 0
        self.logits[end - 1] = int(last_logits)
        self.n = end
        return end - 1

    def decode(self, ctx: Any) -> int:
        """``llama_decode`` on the filled rows: 0 on success, 1 when the KV cache is full."""
        import llama_cpp

        self.struct.n_tokens = self.n
        return int(llama_cpp.llama_decode(ctx, self.struct))
