"""A request's prompt for the loaded model: tokens, stop strings and output constraint.

The engine's worker prepares each request once, before it takes a slot: a chat request through
the model's chat template (with its tools listed, and a required call's opening written), a
text request as written or as a fill-in-the-middle prompt, and a response format or tool call as
a token mask. What the request got wrong (too long for the window, tools the template cannot
call, a suffix the model cannot fill) is raised here, before anything decodes.
"""

from __future__ import annotations

from collections.abc import Sequence

from tandem.errors import ContextLengthError, InvalidRequestError
from tandem.events import GenerationParams
from tandem.local.batch import Prepared
from tandem.local.chat import Message, PromptRenderer, RenderedPrompt
from tandem.local.constrain import Vocabulary
from tandem.local.fim import fim_prompt, read_fim_tokens
from tandem.local.model import LoadedModel
from tandem.local.tokenizer import tokenize
from tandem.local.toolcalls import call_format, forced_opening
from tandem.prompt import TextPrompt


class PromptBuilder:
    """Prepares requests for one loaded model (made when it loads)."""

    def __init__(self, llm: LoadedModel, chat_format: str | None, model_name: str):
        self._llm = llm
        self._renderer = PromptRenderer.for_model(llm.model, chat_format)
        self._vocabulary = Vocabulary(llm.model)
        self._model_name = model_name

    def prepare(
        self, messages: Sequence[Message], params: GenerationParams, assistant_prefix: str
    ) -> Prepared:
        """The request's prompt tokens, stop strings and output constraint."""
        n_ctx = self._llm.n_ctx
        stops: tuple[str, ...] = ()
        if params.prompt is not None:
            tokens = self._text_tokens(params.prompt, params, assistant_prefix)
        else:
            prompt = self._render(messages, params, assistant_prefix)
            tokens, stops = tokenize(self._llm, prompt), prompt.stops
        if len(tokens) >= n_ctx:
            text = params.prompt is not None
            raise ContextLengthError(
                f"The prompt is {len(tokens)} tokens; the local context window is "
                f"{n_ctx}. Shorten the {'prompt' if text else 'conversation'} or raise "
                "TANDEM_N_CTX.",
                param="prompt" if text else "messages",
            )
        constraint = None
        output = params.output
        if params.tools is not None and params.tools.callable:
            output = call_format(params.tools)  # a required call, under its tools' schemas
        if output is not None:
            constraint = self._vocabulary.constraint(output, assistant_prefix)
        return Prepared(tokens, stops, constraint)

    def _render(
        self, messages: Sequence[Message], params: GenerationParams, assistant_prefix: str
    ) -> RenderedPrompt:
        """A chat prompt; with tools, the template lists them, and a required call's opening
        is written already."""
        tools = params.tools
        if tools is None or not tools.callable:
            return self._renderer.render(messages, assistant_prefix)
        if not self._renderer.calls_tools:
            raise InvalidRequestError(
                f"The local model ({self._model_name}) has no tools in its chat template, so "
                "it cannot call them; route the request to the cloud or drop 'tools'.",
                param="tools",
            )
        opening = forced_opening(tools) + assistant_prefix
        return self._renderer.render(messages, opening, [dict(s) for s in tools.specs])

    def _text_tokens(
        self, prompt: TextPrompt, params: GenerationParams, assistant_prefix: str
    ) -> list[int]:
        """A text prompt's tokens: as written (no chat template), or as a FIM prompt cut to
        leave room for the answer."""
        if prompt.suffix is None:
            text = RenderedPrompt(prompt.prefix + assistant_prefix, True, ())
            return tokenize(self._llm, text)
        ids = read_fim_tokens(self._llm.model)
        if ids is None:
            raise InvalidRequestError(
                f"The local model ({self._model_name}) has no fill-in-the-middle tokens, so it "
                "cannot complete between a prefix and a suffix. Send the request without "
                "'suffix', or to a FIM-capable cloud (TANDEM_CLOUD_FIM).",
                param="suffix",
                code="fim_unsupported",
            )
        n_ctx = self._llm.n_ctx
        room = n_ctx - min(params.max_tokens, n_ctx // 4)
        return fim_prompt(self._llm.model, ids, prompt, room, assistant_prefix).tokens
