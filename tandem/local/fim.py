"""Fill-in-the-middle prompts built from the model's own FIM tokens.

llama-cpp-python's ``create_completion(suffix=...)`` uses token id 0 for the prefix, suffix and
middle markers (its FIM ids are hard-coded), so the prompt is built here from the ids llama.cpp
reads from the GGUF (``llama_vocab_fim_pre/suf/mid``, plus the repository and file-separator
tokens of the repo-level pattern). The layout follows llama.cpp's own ``/infill``:

    [BOS] <REP>project\\n <SEP>file\\n text ... <SEP>filename\\n <PRE>prefix <SUF>suffix <MID>middle

and without the repo-level tokens the context files are joined with a neutral separator. What
does not fit is cut as llama.cpp cuts it: context files first, then the start of the prefix
(which keeps at most three quarters of the room) and the end of the suffix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.prompt import SNIPPET_SEPARATOR, TextPrompt


@dataclass(frozen=True)
class FimTokens:
    pre: int
    suf: int
    mid: int
    rep: int | None = None  # repository name marker (repo-level pattern)
    sep: int | None = None  # file separator (repo-level pattern)


def read_fim_tokens(model: Any) -> FimTokens | None:
    """The FIM token ids of a loaded model (``llama_cpp._internals.LlamaModel``), or None
    when its vocabulary has no prefix/suffix/middle markers."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(model.model)
    pre, suf, mid, rep, sep = (
        int(f(vocab))
        for f in (
            llama_cpp.llama_vocab_fim_pre,
            llama_cpp.llama_vocab_fim_suf,
            llama_cpp.llama_vocab_fim_mid,
            llama_cpp.llama_vocab_fim_rep,
            llama_cpp.llama_vocab_fim_sep,
        )
    )
    if min(pre, suf, mid) < 0:
        return None
    return FimTokens(pre, suf, mid, rep if rep >= 0 else None, sep if sep >= 0 else None)


def fim_token_texts(model_path: Path) -> list[str] | None:
    """The prefix, suffix and middle tokens of a GGUF's vocabulary as text (what a server that
    parses special tokens in a prompt reads as those tokens), or None. Reads only the
    vocabulary."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=str(model_path), params=params, verbose=False)
    try:
        ids = read_fim_tokens(model)
        if ids is None:
            return None
        return [model.token_get_text(i) for i in (ids.pre, ids.suf, ids.mid)]
    finally:
        model.close()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class FimPrompt:
    tokens: list[int]
    truncated: bool  # context, prefix or suffix was cut to fit ``room``


def fim_prompt(
    model: Any, ids: FimTokens, prompt: TextPrompt, room: int, continuation: str = ""
) -> FimPrompt:
    """The token ids of ``prompt`` as a FIM prompt of at most ``room`` tokens (more only when
    the markers and the middle alone exceed it). ``continuation`` is answer text already
    sent (it follows the middle)."""
    assert prompt.suffix is not None

    def tok(text: str) -> list[int]:
        if not text:
            return []
        return list(model.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    head = [model.token_bos()] if model.add_bos_token() else []
    middle = tok(prompt.middle + continuation)
    fixed = len(head) + 3 + len(middle)
    prefix, suffix = tok(prompt.prefix), tok(prompt.suffix)
    space = max(room - fixed, 0)
    # The prefix keeps at most three quarters of the room unless the suffix needs less.
    take_prefix = min(len(prefix), max(space * 3 // 4, space - len(suffix)))
    take_suffix = min(len(suffix), space - take_prefix)
    extra = _context(ids, prompt, tok)
    take_extra = min(len(extra), space - take_prefix - take_suffix)
    tokens = [
        *head,
        *extra[len(extra) - take_extra :],
        ids.pre,
        *prefix[len(prefix) - take_prefix :],
        ids.suf,
        *suffix[:take_suffix],
        ids.mid,
        *middle,
    ]
    truncated = (take_prefix, take_suffix, take_extra) != (len(prefix), len(suffix), len(extra))
    return FimPrompt(tokens, truncated)


def _context(ids: FimTokens, prompt: TextPrompt, tok: Any) -> list[int]:
    """The tokens of the context files (llama.cpp's ``input_extra``) before the prefix."""
    out: list[int] = []
    if ids.rep is None or ids.sep is None:
        for chunk in prompt.extra:
            out += [*tok(chunk.text), *tok(SNIPPET_SEPARATOR)]
        return out
    out += [ids.rep, *tok("project\n")]
    for chunk in prompt.extra:
        out += [ids.sep, *tok(f"{chunk.filename}\n"), *tok(chunk.text)]
    return [*out, ids.sep, *tok("filename\n")]
