"""Constrained decoding for the local model: llguidance's token mask applied to each step.

llama.cpp's own grammar sampler (GBNF, ``llama_sampler_init_grammar``) checks every candidate
token against the grammar at every step; llguidance computes the step's mask from a lexer and
parser split in Rust, tens of microseconds for JSON. ``tandem bench structured`` measures both
against unconstrained decoding. The mask is written into the step's logits row before the sampler
chain reads it (on the whole vocabulary, indexed by token id), so top-k, top-p and temperature
then sample among allowed tokens only.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt

from tandem.structured import OutputFormat


class Vocabulary:
    """llguidance's view of one loaded model's tokens (built once per load: ~0.3 s), and the
    compiled matchers of recent schemas (a request copies one instead of compiling again)."""

    CACHED_SCHEMAS = 64

    def __init__(self, model: Any):
        self._model = model  # a llama_cpp._internals.LlamaModel
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._compiled: OrderedDict[tuple[str, bool], Any] = OrderedDict()

    @property
    def tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                import llama_cpp
                from llguidance.llamacpp import lltokenizer_from_vocab

                vocab = self._model.vocab
                ends = [
                    t
                    for t in range(llama_cpp.llama_vocab_n_tokens(vocab))
                    if llama_cpp.llama_vocab_is_eog(vocab, t)
                ]
                with warnings.catch_warnings():  # it calls llama_token_get_attr per token,
                    warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in 0.3.36
                    self._tokenizer = lltokenizer_from_vocab(vocab, eos_token=ends or None)
            return self._tokenizer

    def constraint(self, fmt: OutputFormat, prefix: str = "") -> Constraint:
        """A fresh grammar state for one generation under ``fmt``, past ``prefix`` (the text a
        continued answer already has: another tier's, in whatever layout it wrote)."""
        from llguidance import LLMatcher

        tokenizer = self.tokenizer
        any_whitespace = bool(prefix)
        key = (fmt.schema_json, any_whitespace)
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
        if compiled is None:
            compiled = LLMatcher(tokenizer, fmt.grammar(any_whitespace), log_level=0)
            if compiled.is_error():  # the edge compiled it already: a tokenizer problem
                raise ValueError(f"the output grammar does not load: {compiled.get_error()}")
            with self._lock:
                self._compiled[key] = compiled
                while len(self._compiled) > self.CACHED_SCHEMAS:
                    self._compiled.popitem(last=False)
        constraint = Constraint(compiled.deep_copy(), int(tokenizer.vocab_size), fmt)
        if prefix:
            text = prefix.encode("utf-8")
            constraint.prime(self._model.tokenize(text, add_bos=False, special=False))
        return constraint


class Constraint:
    """One generation's grammar state: masks the next step, then consumes the chosen token."""

    def __init__(self, matcher: Any, n_vocab: int, fmt: OutputFormat):
        self.format = fmt
        self._matcher = matcher
        self._n_vocab = n_vocab
        self._mask = np.full(((self._n_vocab + 31) // 32,), -1, dtype=np.int32)

    def prime(self, tokens: list[int]) -> None:
        """Consume text the answer already has (a continued answer's prefix)."""
        if tokens and not self._matcher.consume_tokens(tokens):
            raise ValueError(f"the answer so far does not match the schema: {self.error}")

    def mask_logits(self, _ids: Any, scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """As a llama-cpp-python logits processor (``bench structured`` compares it there)."""
        self.mask(scores)
        return scores

    def mask(self, scores: npt.NDArray[np.float32]) -> None:
        """Tokens the grammar forbids next get -inf, in place."""
        self._matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little")
        n = min(scores.shape[0], self._n_vocab)
        blocked = allowed[:n] == 0
        scores[:n][blocked] = -np.inf
        if scores.shape[0] > n:  # padding rows of a vocabulary larger than the tokenizer's
            scores[n:] = -np.inf

    def accept(self, token: int) -> bool:
        """Advance past the sampled token; False if the grammar refuses it."""
        return bool(self._matcher.consume_token(token))

    @property
    def done(self) -> bool:
        """The document is complete and nothing more may follow."""
        return bool(self._matcher.is_stopped())

    @property
    def error(self) -> str:
        return str(self._matcher.get_error())
