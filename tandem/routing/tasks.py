"""Labeled tasks for routing evaluation, and each tier's per-item results, cached on disk.

A routing evaluation needs, for every item, whether each tier answers it correctly and the
signals a router may use. Running a model over a task is the slow part, so each model's
per-item records are appended to a JSON-lines file keyed by the model file's hash and the item's
hash: a second evaluation (another router, another threshold, a resumed run) reads them back.

Tasks:
- ``arc_easy``, ``piqa``: multiple choice by log-likelihood of each choice after the query
  (the choice with the highest log-likelihood per byte is the answer). Records keep every
  choice's log-likelihood, also without the query (for PMI-style confidence features).
- ``lambada``: the greedy last word after the passage (exact match). Records keep each generated
  token's log-probability, the distribution's entropy and the top-2 margin.
- ``mmlu``: RouteLLM's published per-prompt correctness of a weak and a strong model; nothing is
  run, the labels are the data.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tandem.errors import ConfigError

TASK_FILES = {
    "arc_easy": "arc_easy_dev.jsonl",
    "piqa": "piqa_dev.jsonl",
    "lambada": "lambada_openai_dev.jsonl",
    "mmlu": "routellm_mmlu",
}
MULTIPLE_CHOICE = ("arc_easy", "piqa")
# Bump when a record's meaning changes: old records are then ignored, not misread.
PROTOCOL = "v1"
LAMBADA_MAX_TOKENS = 8
_PUNCT = "\"'“”‘’.,;:!?()[]«»-—"

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Item:
    """One labeled item: an id (hash of its content), the prompt text, and task fields."""

    key: str
    prompt: str
    fields: dict[str, Any] = field(hash=False, compare=False)
    group: str = ""  # e.g. the MMLU subject


def item_key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def mc_context(query: str) -> str:
    return f"{query.rstrip()}\nAnswer:"


def load_task(task: str, path: Path, limit: int | None = None) -> list[Item]:
    """The items of ``task`` from ``path`` (a JSON-lines file, or the MMLU CSV folder)."""
    if task not in TASK_FILES:
        raise ConfigError(f"Unknown task {task!r}; choose from {', '.join(TASK_FILES)}.",
                          param="task")
    if not path.exists():
        raise ConfigError(f"No data at {path}: pass --data FILE or --data-dir DIR.",
                          param="data")
    items = list(_mmlu(path) if task == "mmlu" else _jsonl(task, path))
    if not items:
        raise ConfigError(f"{path} holds no {task} items.", param="data")
    return items[:limit] if limit else items


def _jsonl(task: str, path: Path) -> Iterator[Item]:
    need = ("context", "continuation") if task == "lambada" else ("query", "choices", "gold")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                fields = {k: obj[k] for k in need}
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{path}:{n}: not a {task} item with fields {', '.join(need)} ({exc})."
                ) from exc
            prompt = fields["context"] if task == "lambada" else fields["query"]
            yield Item(item_key(fields), str(prompt), fields)


def _mmlu(path: Path) -> Iterator[Item]:
    csv.field_size_limit(sys.maxsize)  # the prompts of some subjects are long
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    for file in files:
        subject = file.stem.removeprefix("mmlu_")
        with file.open(encoding="utf-8", newline="") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None or len(header) != 3:
                raise ConfigError(f"{file}: expected the columns prompt,<weak>,<strong>.")
            for row in rows:
                weak, strong = (_bool(v, file) for v in row[1:3])
                fields = {"weak": weak, "strong": strong, "models": header[1:]}
                yield Item(item_key([subject, row[0]]), row[0], fields, subject)


def _bool(value: str, file: Path) -> bool:
    if value not in ("True", "False"):
        raise ConfigError(f"{file}: correctness must be True or False, not {value!r}.")
    return value == "True"


# -- per-item cache ---------------------------------------------------------------------------


def default_cache_dir() -> Path:
    from tandem.datadirs import cache_dir

    return cache_dir("route-eval")


class ItemCache:
    """Append-only JSON lines of one model's records for one task: ``{"key", ...record}``."""

    def __init__(self, directory: Path, model_sha: str, task: str):
        self.path = directory / model_sha[:16] / f"{task}-{PROTOCOL}.jsonl"
        self._tail_checked = False

    def load(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return records
        for line in lines:
            try:
                rec = json.loads(line)
                records[rec.pop("key")] = rec
            except (ValueError, KeyError, AttributeError):
                continue  # a line cut short by a killed run: it is measured again
        return records

    def append(self, key: str, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": key, **record}) + "\n"
        if not self._tail_checked:  # a killed run may have left half a line: end it first
            self._tail_checked = True
            with self.path.open("ab+") as f:
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = "\n" + line
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)


# -- running a model over a task ----------------------------------------------------------------


def run_items(model: Path, task: str, items: list[Item], cache_dir: Path,
              n_threads: int | None = None, progress: Progress | None = None
              ) -> dict[str, dict[str, Any]]:
    """Each item's record for ``model`` (measured now unless cached)."""
    from tandem.datadirs import file_sha256
    from tandem.scoring import Scorer

    cache = ItemCache(cache_dir, file_sha256(model), task)
    records = cache.load()
    todo = [it for it in items if it.key not in records]
    if todo:
        scorer = Scorer(model, n_ctx=1024, n_threads=n_threads)
        run = run_lambada if task == "lambada" else run_choice
        try:
            for i, item in enumerate(todo):
                rec = run(scorer, item)
                cache.append(item.key, rec)
                records[item.key] = rec
                if progress is not None:
                    progress(f"{task} · {model.name}", i + 1, len(todo))
        finally:
            scorer.close()
    return {it.key: records[it.key] for it in items}


def run_choice(scorer: Any, item: Item) -> dict[str, Any]:
    """Log-likelihood of each choice after the query, and without it (``Answer:`` alone)."""
    conts = [f" {str(c).strip()}" for c in item.fields["choices"]]
    tokens = [scorer.tokenize(c) for c in conts]
    ll = scorer.continuation_logprob(scorer.tokenize(mc_context(item.prompt), special=True),
                                     tokens)
    ll_uncond = scorer.continuation_logprob(scorer.tokenize("Answer:", special=True), tokens)
    n_bytes = [len(c.encode("utf-8")) for c in conts]
    pred = int(np.argmax([a / b for a, b in zip(ll, n_bytes, strict=True)]))
    return {
        "ll": [round(x, 5) for x in ll],
        "ll_uncond": [round(x, 5) for x in ll_uncond],
        "n_tokens": [len(t) for t in tokens],
        "n_bytes": n_bytes,
        "pred": pred,
        "correct": int(pred == int(item.fields["gold"])),
    }


def run_lambada(scorer: Any, item: Item) -> dict[str, Any]:
    """Greedy decoding of the passage's next word, with each step's confidence statistics."""
    from tandem.scoring import log_softmax

    llm = scorer.llm
    ctx = scorer.tokenize(str(item.fields["context"]), special=True)
    ctx = ctx[-(scorer.n_ctx - LAMBADA_MAX_TOKENS):]
    llm.reset()
    llm.eval(ctx)
    text = ""
    logprobs: list[float] = []
    entropy: list[float] = []
    margin: list[float] = []
    eos = llm.token_eos()
    for _ in range(LAMBADA_MAX_TOKENS):
        row = log_softmax(llm.scores[llm.n_tokens - 1 : llm.n_tokens])[0]
        tok = int(np.argmax(row))
        if tok == eos:
            break
        piece = llm.detokenize([tok]).decode("utf-8", errors="ignore")
        if logprobs and _closes_word(text, piece):
            break
        second = float(np.partition(row, -2)[-2])
        p = np.exp(row)
        logprobs.append(round(float(row[tok]), 5))
        entropy.append(round(float(-(p * row).sum()), 5))
        margin.append(round(float(row[tok]) - second, 5))
        text += piece
        llm.eval([tok])
    word = lambada_word(text)
    target = lambada_word(str(item.fields["continuation"]))
    return {"text": text, "word": word, "logprobs": logprobs, "entropy": entropy,
            "margin": margin, "correct": int(word == target and bool(word))}


def _closes_word(text: str, piece: str) -> bool:
    """Does ``piece`` start another word (a space) or close this one (punctuation)?"""
    if not piece.strip() or piece[0].isspace():
        return True
    return not piece.strip(_PUNCT) and any(ch.isalnum() for ch in text)


def lambada_word(text: str) -> str:
    """The first word of ``text`` without surrounding punctuation."""
    match = re.match(r"\s*(\S+)", text)
    return match.group(1).strip(_PUNCT) if match else ""
