"""The model's vocabulary and chat template, apart from the worker's llama.cpp context.

The gateway counts prompt tokens and renders chat templates for every turn (routing gates,
session trimming) on a thread of its own, while the engine's worker thread generates, unloads
after its keep-alive and reloads. Sharing the worker's ``Llama`` object would race it (a
tokenize call on a context that the worker is closing is a use-after-free), and waiting for the
worker would put every count behind a running generation. So the tokenizer loads the GGUF a
second time *vocabulary only* (no weights, no context: a few MB), keeps it for the engine's
lifetime, and serializes its callers with a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tandem.errors import ModelLoadError
from tandem.local.chat import Message, PromptRenderer, RenderedPrompt
from tandem.local.fim import FimTokens, read_fim_tokens


class PromptTokenizer:
    """Renders messages with the model's chat template and tokenizes them. Thread-safe."""

    def __init__(self, model_path: Path, chat_format: str | None):
        self._model_path = model_path
        self._chat_format = chat_format
        self._lock = threading.Lock()
        self._model: Any = None
        self._renderer: PromptRenderer | None = None

    def render(self, messages: Sequence[Message], assistant_prefix: str = "") -> RenderedPrompt:
        with self._lock:
            return self._loaded_renderer().render(messages, assistant_prefix)

    def tokens(self, prompt: RenderedPrompt) -> list[int]:
        with self._lock:
            self._loaded_renderer()
            return tokenize(self._model, prompt)

    def count(self, messages: Sequence[Message], assistant_prefix: str = "") -> int:
        """Tokens of the prompt that asks for the next assistant turn."""
        with self._lock:
            prompt = self._loaded_renderer().render(messages, assistant_prefix)
            return len(tokenize(self._model, prompt))

    def calls_tools(self) -> bool:
        """Whether the chat template calls tools."""
        with self._lock:
            return self._loaded_renderer().calls_tools

    def fim_tokens(self) -> FimTokens | None:
        """The vocabulary's fill-in-the-middle token ids, or None."""
        with self._lock:
            self._loaded_renderer()
            return read_fim_tokens(self._model)

    def close(self) -> None:
        with self._lock:
            if self._model is not None:
                self._model.close()
            self._model = self._renderer = None

    def _loaded_renderer(self) -> PromptRenderer:
        if self._renderer is None:
            import llama_cpp
            from llama_cpp._internals import LlamaModel

            params = llama_cpp.llama_model_default_params()
            params.vocab_only = True
            try:
                model = LlamaModel(path_model=str(self._model_path), params=params, verbose=False)
            except (ValueError, OSError) as exc:
                raise ModelLoadError(
                    f"Cannot read the vocabulary of {self._model_path}: {exc}"
                ) from exc
            self._renderer = PromptRenderer.for_model(model, self._chat_format)
            self._model = model
        return self._renderer


def tokenize(model: Any, prompt: RenderedPrompt) -> list[int]:
    """Token ids of a rendered prompt; ``model`` is a ``llama_cpp`` model or ``Llama``."""
    return list(model.tokenize(prompt.text.encode("utf-8"), add_bos=prompt.add_bos, special=True))
