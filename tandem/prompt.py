"""A prompt given as text (``/v1/completions``, ``/infill``) instead of chat messages.

The model continues ``prefix``; with a ``suffix`` it fills in the middle (FIM) between the two,
optionally after ``extra`` context (other files of the project, llama.cpp's ``input_extra``).

The rest of the gateway reads a text prompt as messages: the routers read the prefix (the
last user message), the privacy scan reads every piece, and the cloud receives the redacted
pieces rebuilt into a text prompt (``with_texts``). No chat template is applied to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tandem.local.chat import Message

if TYPE_CHECKING:
    from tandem.events import GenerationParams

# Between context files when the model has no file-separator token (llama.cpp's choice).
SNIPPET_SEPARATOR = "\n\n--- snippet ---\n\n"


@dataclass(frozen=True)
class ExtraChunk:
    """Context from another file, placed before the FIM prefix."""

    filename: str
    text: str


@dataclass(frozen=True)
class TextPrompt:
    prefix: str
    suffix: str | None = None  # set: fill in the middle between prefix and suffix
    extra: tuple[ExtraChunk, ...] = ()
    middle: str = ""  # text already typed after the prefix (llama.cpp's infill ``prompt``)

    @property
    def fim(self) -> bool:
        return self.suffix is not None

    def messages(self) -> list[Message]:
        """The pieces as user messages: the extra files, the suffix, the middle, then the
        prefix last (the routers read the last user message)."""
        texts = [*(c.text for c in self.extra)]
        if self.suffix is not None:
            texts.append(self.suffix)
        if self.middle:
            texts.append(self.middle)
        texts.append(self.prefix)
        return [{"role": "user", "content": t} for t in texts]

    def with_texts(self, messages: Sequence[Message]) -> TextPrompt:
        """The same prompt with its pieces replaced, in ``messages()`` order (the redacted
        messages the cloud receives)."""
        texts = [m["content"] for m in messages]
        expected = len(self.messages())
        if len(texts) != expected:
            raise ValueError(f"a text prompt has {expected} pieces, not {len(texts)}")
        extra = tuple(ExtraChunk(c.filename, t) for c, t in zip(self.extra, texts, strict=False))
        rest = texts[len(self.extra) :]
        suffix = rest.pop(0) if self.suffix is not None else None
        middle = rest.pop(0) if self.middle else ""
        return TextPrompt(rest[0], suffix, extra, middle)


def text_body(prompt: TextPrompt, params: GenerationParams) -> dict[str, Any]:
    """The OpenAI ``/completions`` request for a text prompt (its pieces as the cloud may see
    them). Context files go before the prefix, and the middle after it."""
    context = "".join(f"{c.text}{SNIPPET_SEPARATOR}" for c in prompt.extra)
    body: dict[str, Any] = {
        "prompt": context + prompt.prefix + prompt.middle,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if prompt.suffix is not None:
        body["suffix"] = prompt.suffix
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    if params.top_k is not None:
        body["top_k"] = params.top_k
    if params.logprobs:  # the legacy shape: the number of alternatives per token
        body["logprobs"] = params.top_logprobs
    return body


def endpoint_for(body: dict[str, Any]) -> str:
    """The OpenAI endpoint a request body is for."""
    return "completions" if "prompt" in body else "chat/completions"


def fim_for_llama_cpp(body: dict[str, Any], tokens: Sequence[str] | None) -> dict[str, Any]:
    """A FIM request as ``llama_cpp.server`` serves it: the prompt written with the model's
    FIM tokens (which it parses as special tokens when no suffix is given), since its own
    ``suffix`` handling uses token id 0."""
    if tokens is None:
        raise ValueError("a llama_cpp FIM request needs the cloud model's FIM tokens")
    pre, suf, mid = tokens
    body = dict(body)
    suffix = body.pop("suffix")
    body["prompt"] = f"{pre}{body['prompt']}{suf}{suffix}{mid}"
    return body
