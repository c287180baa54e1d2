"""Fill-in-the-middle prompts from the model's own FIM token ids, on a vocabulary-only GGUF whose
metadata names FIM tokens (the bundled models have none)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tandem.catalog import bundled_path
from tandem.local.fim import FimTokens, fim_prompt, fim_token_texts, read_fim_tokens
from tandem.prompt import SNIPPET_SEPARATOR, ExtraChunk, TextPrompt
from tests.unit.gguf_fixture import vocab_gguf

# Ids of tokens SmolLM2's vocabulary has, named as FIM markers in the fixture's metadata.
PRE, SUF, MID, SEP = 3, 5, 6, 7
FIM_KEYS = {
    "tokenizer.ggml.fim_pre_token_id": PRE,
    "tokenizer.ggml.fim_suf_token_id": SUF,
    "tokenizer.ggml.fim_mid_token_id": MID,
    "tokenizer.ggml.fim_sep_token_id": SEP,
}


def _load(path: Path) -> Any:
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    return LlamaModel(path_model=str(path), params=params, verbose=False)


@pytest.fixture(scope="module")
def fim_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vocab_gguf(tmp_path_factory.mktemp("fim") / "fim-vocab.gguf", FIM_KEYS)


@pytest.fixture(scope="module")
def model(fim_gguf: Path) -> Iterator[Any]:
    m = _load(fim_gguf)
    yield m
    m.close()


def tok(model: Any, text: str) -> list[int]:
    return list(model.tokenize(text.encode(), add_bos=False, special=False))


def test_the_ids_come_from_the_gguf_not_a_hard_coded_zero(model: Any) -> None:
    ids = read_fim_tokens(model)
    assert ids is not None
    assert (ids.pre, ids.suf, ids.mid, ids.sep) == (PRE, SUF, MID, SEP)
    assert ids.rep == 4  # SmolLM2's own <reponame>, which llama.cpp recognises by its text


def test_a_vocabulary_without_fim_tokens_has_none() -> None:
    bundled = _load(bundled_path("smollm2"))
    try:
        assert read_fim_tokens(bundled) is None
    finally:
        bundled.close()
    assert fim_token_texts(bundled_path("smollm2")) is None


def test_token_texts_name_the_markers(fim_gguf: Path) -> None:
    assert fim_token_texts(fim_gguf) == ["<repo_name>", "<file_sep>", "<filename>"]


def test_prefix_suffix_middle_layout(model: Any) -> None:
    ids = read_fim_tokens(model)
    assert ids is not None
    prompt = TextPrompt("def add(a, b):\n    ", "\n\nprint(add(1, 2))", middle="ret")
    built = fim_prompt(model, ids, prompt, room=1000, continuation="urn")
    # Repo-level pattern (the fixture has repo and file-separator tokens), then PSM.
    header = [ids.rep, *tok(model, "project\n"), SEP, *tok(model, "filename\n")]
    assert built.tokens == [
        *header,
        PRE,
        *tok(model, "def add(a, b):\n    "),
        SUF,
        *tok(model, "\n\nprint(add(1, 2))"),
        MID,
        *tok(model, "return"),
    ]
    assert not built.truncated


def test_context_files_go_before_the_prefix(model: Any) -> None:
    ids = read_fim_tokens(model)
    assert ids is not None
    prompt = TextPrompt("x = ", "\n", (ExtraChunk("util.py", "def helper(): pass\n"),))
    tokens = fim_prompt(model, ids, prompt, room=1000).tokens
    file_part = [SEP, *tok(model, "util.py\n"), *tok(model, "def helper(): pass\n")]
    start = tokens.index(SEP)
    assert tokens[start : start + len(file_part)] == file_part
    assert tokens.index(PRE) > start + len(file_part)
    # Without repo-level tokens the files are joined with a neutral separator.
    plain = FimTokens(PRE, SUF, MID)
    tokens = fim_prompt(model, plain, prompt, room=1000).tokens
    expected = [*tok(model, "def helper(): pass\n"), *tok(model, SNIPPET_SEPARATOR), PRE]
    assert tokens[: len(expected)] == expected


def test_what_does_not_fit_is_cut_from_the_far_ends(model: Any) -> None:
    ids = FimTokens(PRE, SUF, MID)
    prefix = "".join(f"line_{i} = {i}\n" for i in range(200))
    suffix = "".join(f"after_{i} = {i}\n" for i in range(200))
    prompt = TextPrompt(prefix, suffix, (ExtraChunk("a.py", "import os\n" * 50),))
    built = fim_prompt(model, ids, prompt, room=120)
    assert built.truncated
    assert len(built.tokens) <= 120
    tokens = built.tokens
    kept_prefix = tokens[tokens.index(PRE) + 1 : tokens.index(SUF)]
    kept_suffix = tokens[tokens.index(SUF) + 1 : tokens.index(MID)]
    assert kept_prefix == tok(model, prefix)[-len(kept_prefix) :]  # the text at the cursor
    assert kept_suffix == tok(model, suffix)[: len(kept_suffix)]
    assert len(kept_prefix) >= 3 * len(kept_suffix) - 3  # the prefix keeps most of the room
    assert tokens.index(PRE) == 0  # the context files went first
