"""Rendering chat messages into a model's prompt text.

The GGUF's own chat template (``tokenizer.chat_template``) is used when it has one; a base model
without a template needs a named llama-cpp-python chat format (e.g. ``gemma``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tandem.errors import ModelLoadError

Message = dict[str, str]


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    add_bos: bool  # whether the tokenizer must add BOS (the template did not)
    stops: tuple[str, ...]  # stop strings the chat format implies


class PromptRenderer:
    """Messages → prompt text for one model. ``calls_tools``: its template lists tools and
    takes ``<tool_call>`` answers (``tandem.local.toolcalls``)."""

    def __init__(self, formatter: Callable[..., Any], calls_tools: bool = False):
        self._formatter = formatter
        self.calls_tools = calls_tools

    @classmethod
    def for_model(cls, model: Any, chat_format: str | None) -> PromptRenderer:
        """The renderer for a loaded model (``llama_cpp._internals.LlamaModel``, also the
        ``_model`` of a ``Llama``): its template, else ``chat_format``."""
        from llama_cpp import llama_chat_format

        template = model.metadata().get("tokenizer.chat_template")
        if chat_format is None and template:
            from tandem.local.toolcalls import hermes_template

            return cls(_jinja_formatter(model, template), hermes_template(template))
        name = chat_format or ""
        formatter = getattr(llama_chat_format, f"format_{name.replace('-', '_')}", None)
        if formatter is None:
            raise ModelLoadError(
                "The model has no chat template and no usable chat format was configured; "
                "set TANDEM_LOCAL_CHAT_FORMAT (e.g. 'gemma', 'chatml', 'llama-2')."
            )
        return cls(formatter)

    def render(
        self,
        messages: Sequence[Message],
        assistant_prefix: str = "",
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> RenderedPrompt:
        """The prompt that asks for the next assistant turn, optionally already begun;
        ``tools`` (OpenAI's tool specs) for a template that calls them."""
        if tools:
            from tandem.local.toolcalls import template_messages

            result = self._formatter(messages=template_messages(messages), tools=list(tools))
        else:
            result = self._formatter(messages=list(messages))
        stop = result.stop
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        return RenderedPrompt(result.prompt + assistant_prefix, not result.added_special, stops)


def _jinja_formatter(model: Any, template: str) -> Callable[..., Any]:
    from llama_cpp import llama_chat_format

    def token_text(token_id: int) -> str:
        return "" if token_id == -1 else str(model.token_get_text(token_id))

    return llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=token_text(model.token_eos()),
        bos_token=token_text(model.token_bos()),
    )
