"""The chat protocol of ``tandem route-eval``: items asked the way production asks them.

Each item is one user message sent through the model's chat template; both tiers *generate*
an answer (greedy), and the answer is graded against the gold: the letter or the choice text
for multiple-choice items (ARC-Easy, PIQA: the question followed by lettered options, as a
user would paste them), the number for arithmetic items. The routers then see exactly what the
gateway sees at decision time: the prompt features of the user message before anything is
generated, and the cascade's confidence statistics of the local model's first K generated
tokens (``RunningConfidence``, the gateway's own code), so K can be varied afterwards from one
run.

The local tier runs in the gateway's own ``LocalEngine`` (same template, same per-step
log-probabilities); the cloud tier is an OpenAI-compatible endpoint (the stand-in cloud by
default). Records are cached per model and item, as for the log-likelihood protocol.

``arith`` is a seeded generator of arithmetic questions (products of two-digit numbers, change
from a purchase, distance from speed and time, sums of small numbers): free-form questions with
a checkable answer, where a larger model's gain is real and measurable; it is built here rather
than read from a file because the dev data has no free-form items with gold answers. ``code``
and ``writing`` (``chat_families``) are the free-form requests chat traffic is made of: small
Python functions checked by running tests, and everyday writing checked for a done task.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tandem.errors import ConfigError
from tandem.routing.chat_families import (
    CODE_MAX_TOKENS,
    GRADERS,
    WRITING_MAX_TOKENS,
    code_items,
    writing_items,
)
from tandem.routing.signals import RunningConfidence, prompt_features
from tandem.routing.tasks import Item, ItemCache, Progress, item_key, load_task

CHAT_TASKS = ("arc_easy", "piqa", "arith", "code", "writing")
CHAT_PROTOCOL = "chat1"
LETTERS = "ABCDEFGH"
MC_MAX_TOKENS = 64  # a lettered answer after a sentence of preamble; more than any K measured
ARITH_MAX_TOKENS = 160  # room to work the sum out


def mc_question(query: str, choices: Sequence[str]) -> str:
    """The question and its lettered options, one per line, as a user would paste them."""
    query = re.sub(r"^(?:Question|Goal):\s*", "", query.strip())
    query = re.sub(r"\s*Answer:\s*$", "", query)
    lines = [f"{LETTERS[i]}. {str(c).strip()}" for i, c in enumerate(choices)]
    return "\n".join([query, *lines])


def chat_items(task: str, path: Path | None = None, limit: int | None = None,
               seed: int = 0) -> list[Item]:
    """A task's items in chat form: ``prompt`` is the user message, ``fields`` hold the gold."""
    generated = {"arith": arith_items, "code": code_items, "writing": writing_items}
    if task in generated:
        return generated[task](limit or 400, seed)
    if task not in CHAT_TASKS:
        raise ConfigError(f"The chat protocol has the tasks {', '.join(CHAT_TASKS)}, not "
                          f"{task!r}.", param="task")
    assert path is not None
    items = []
    for it in load_task(task, path, limit):
        choices = [str(c) for c in it.fields["choices"]]
        prompt = mc_question(it.prompt, choices)
        fields = {"choices": choices, "gold": int(it.fields["gold"]), "kind": "choice",
                  "task": task}
        items.append(Item(it.key, prompt, fields))  # no group: folds are by item
    return items


_THINGS = ("pencils", "notebooks", "apples", "tickets", "stamps", "candles", "mugs")
_NAMES = ("Sam", "Alex", "Jo", "Robin", "Kim", "Lee")


def arith_items(n: int, seed: int = 0) -> list[Item]:
    """``n`` arithmetic questions with integer answers, from four families, seeded."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        family = i % 4
        if family == 0:
            a, b = rng.randint(12, 99), rng.randint(12, 99)
            prompt, gold = f"What is {a} times {b}?", a * b
        elif family == 1:
            who, what = rng.choice(_NAMES), rng.choice(_THINGS)
            k, price = rng.randint(3, 19), rng.randint(2, 9)
            note = rng.choice([k * price + d for d in (1, 5, 10, 20, 35)])
            note = max(note, (k * price // 10 + 1) * 10)
            prompt = (f"{who} buys {k} {what} at {price} dollars each and pays with "
                      f"{note} dollars. How much change does {who} get back?")
            gold = note - k * price
        elif family == 2:
            speed, hours = rng.randint(35, 95), rng.randint(2, 9)
            prompt = (f"A train travels at {speed} km per hour for {hours} hours. How many "
                      "kilometres does it travel?")
            gold = speed * hours
        else:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            prompt, gold = f"What is {a} plus {b}?", a + b
        fields = {"gold_number": gold, "kind": "number", "family": family, "task": "arith"}
        out.append(Item(item_key(["arith", seed, i, prompt]), prompt, fields))
    return out


# -- grading -------------------------------------------------------------------------------------

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_STATED = re.compile(
    r"\b(?:answer|option|choice)\s*(?:is|would be|:)?\s*\**\s*\(?([A-H])\b(?![a-z'])")
_LINE_LETTER = re.compile(r"^\W{0,3}\(?([A-H])(?:[).:]|\s*$)", re.M)
_BOLD_LETTER = re.compile(r"\*\*\(?([A-H])[).:*]")
_BOXED_LETTER = re.compile(r"\\boxed\{\s*(?:\\text\{)?\(?([A-H])\)?")


def grade(item: Item, answer: str) -> bool:
    """Is ``answer`` right? A letter (or exactly one choice's text) for a choice item, the
    final number for an arithmetic one; passing tests for code, a done task for writing."""
    if item.fields["kind"] in GRADERS:
        return GRADERS[item.fields["kind"]](item, answer)
    if item.fields["kind"] == "number":
        boxed = re.findall(r"\\boxed\{([^}]*)\}", answer)
        pool = boxed[-1] if boxed else answer
        numbers = [n.replace(",", "") for n in _NUM.findall(pool)]
        if not numbers:
            return False
        try:
            return float(numbers[-1]) == float(item.fields["gold_number"])
        except ValueError:
            return False
    return choice_of(item, answer) == int(item.fields["gold"])


def choice_of(item: Item, answer: str) -> int | None:
    """The option an answer picks, or None when it picks none or several.

    In order: a stated letter ("the answer is B", "\\boxed{B}"); the one letter that starts
    a line ("B. ...", an answer that repeats several options starts several lines and picks
    nothing); a bold letter; the one option whose text the answer contains.
    """
    choices: list[str] = item.fields["choices"]
    valid = LETTERS[: len(choices)]
    text = answer.strip()
    stated = [m for m in _BOXED_LETTER.findall(text) + _STATED.findall(text) if m in valid]
    if stated:
        return valid.index(stated[0])
    lines = {m for m in _LINE_LETTER.findall(text) if m in valid}
    if len(lines) == 1:
        return valid.index(lines.pop())
    if len(lines) > 1:
        return None
    bold = {m for m in _BOLD_LETTER.findall(text) if m in valid}
    if len(bold) == 1:
        return valid.index(bold.pop())
    low = text.lower()
    found = [i for i, c in enumerate(choices) if c.strip() and c.strip().lower() in low]
    return found[0] if len(found) == 1 else None


# -- running the tiers -------------------------------------------------------------------------

def max_tokens_for(item: Item) -> int:
    return {"number": ARITH_MAX_TOKENS, "code": CODE_MAX_TOKENS,
            "writing": WRITING_MAX_TOKENS}.get(item.fields["kind"], MC_MAX_TOKENS)


def run_local(engine: Any, items: Sequence[Item], cache: ItemCache,
              progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Each item answered by the gateway's local engine, with every token's log-probability."""
    from tandem.events import Finish, GenerationParams, TokenEvent

    records = cache.load()
    todo = [it for it in items if it.key not in records]
    for n, item in enumerate(todo):
        params = GenerationParams(max_tokens=max_tokens_for(item), temperature=0.0)
        pieces: list[str] = []
        logprobs: list[float | None] = []
        started = time.perf_counter()
        first: float | None = None
        for event in engine.stream_sync([{"role": "user", "content": item.prompt}], params):
            if isinstance(event, TokenEvent):
                if first is None:
                    first = time.perf_counter() - started
                pieces.append(event.text)
                logprobs.append(None if event.logprob is None else round(event.logprob, 5))
            elif isinstance(event, Finish):
                break
        answer = "".join(pieces)
        rec = {"pieces": pieces, "logprobs": logprobs, "answer": answer,
               "correct": int(grade(item, answer)), "ttft_s": round(first or 0.0, 4),
               "seconds": round(time.perf_counter() - started, 4)}
        _store(cache, records, item, rec, progress, "local", n + 1, len(todo))
    return {it.key: records[it.key] for it in items}


def _store(cache: ItemCache, records: dict[str, dict[str, Any]], item: Item,
           rec: dict[str, Any], progress: Progress | None, tier: str, done: int, total: int
           ) -> None:
    """Keep one item's record (on disk and in ``records``) and report progress."""
    cache.append(item.key, rec)
    records[item.key] = rec
    if progress is not None:
        progress(f"{item.fields.get('task', '')} · {tier}", done, total)


def run_cloud(base_url: str, items: Sequence[Item], cache: ItemCache,
              progress: Progress | None = None, model: str = "cloud",
              timeout_s: float = 300.0) -> dict[str, dict[str, Any]]:
    """Each item answered by an OpenAI-compatible endpoint (greedy)."""
    import httpx

    records = cache.load()
    todo = [it for it in items if it.key not in records]
    with httpx.Client(base_url=base_url, timeout=timeout_s) as http:
        for n, item in enumerate(todo):
            started = time.perf_counter()
            r = http.post("/chat/completions", json={
                "model": model, "temperature": 0.0, "max_tokens": max_tokens_for(item),
                "messages": [{"role": "user", "content": item.prompt}]})
            r.raise_for_status()
            answer = r.json()["choices"][0]["message"]["content"] or ""
            rec = {"answer": answer, "correct": int(grade(item, answer)),
                   "seconds": round(time.perf_counter() - started, 4)}
            _store(cache, records, item, rec, progress, "cloud", n + 1, len(todo))
    return {it.key: records[it.key] for it in items}


def cascade_features(prompt: str, record: dict[str, Any], k: int) -> dict[str, float]:
    """The cascade's features after the local model's first ``k`` tokens, computed by the
    gateway's own ``RunningConfidence`` from the recorded tokens."""
    confidence = RunningConfidence(prompt)
    for piece, lp in zip(record["pieces"], record["logprobs"], strict=True):
        confidence.add(lp, piece)
        if len(confidence) >= k:
            break
    return confidence.features()


def chat_rows(task: str, items: Sequence[Item], local: dict[str, dict[str, Any]],
              cloud: dict[str, dict[str, Any]], k: int) -> Any:
    """``TaskRows`` of the chat protocol with the cascade checked after ``k`` tokens."""
    from tandem.routing.evaluate import TaskRows
    from tandem.routing.signals import GENERATION_FEATURES

    feats = []
    for item in items:
        row = prompt_features(item.prompt)
        row.update(cascade_features(item.prompt, local[item.key], k))
        feats.append(row)
    # Graded here, from the stored answers, so that a change of grading needs no new run.
    lo = np.array([int(grade(it, local[it.key]["answer"])) for it in items])
    cl = np.array([int(grade(it, cloud[it.key]["answer"])) for it in items])
    return TaskRows(task, list(items), feats, lo, cl, GENERATION_FEATURES)


def task_items(task: str, data_dir: Path, limit: int | None, part: str) -> list[Item]:
    """The ``part`` half of a chat task's first ``limit`` items (a dev file's, or generated)."""
    from tandem.routing.tasks import TASK_FILES

    path = data_dir / TASK_FILES[task] if task in TASK_FILES else None
    return split(chat_items(task, path, limit), part)


def split(items: Sequence[Item], part: str) -> list[Item]:
    """The ``tune`` or ``report`` half of the items (by item hash, fixed)."""
    if part not in ("tune", "report", "all"):
        raise ConfigError(f"A split is tune, report or all, not {part!r}.", param="split")
    if part == "all":
        return list(items)
    want = 0 if part == "tune" else 1
    return [it for it in items if int(it.key[:8], 16) % 2 == want]


def ttft_cost(local: dict[str, dict[str, Any]], items: Sequence[Item], k: int) -> float:
    """Median seconds until the cascade's check at ``k`` tokens (or the shorter answer's end),
    estimated from each recorded answer's first token time and its mean time per token."""
    costs = [time_to_token(local[it.key], k) for it in items if local[it.key]["pieces"]]
    return float(np.median(costs)) if costs else 0.0


def time_to_token(rec: dict[str, Any], k: int) -> float:
    """Seconds from the request to a recorded answer's ``k``-th token (or its last, when
    shorter), from its first token time and its mean time per later token."""
    n = len(rec["pieces"])
    per_token = (rec["seconds"] - rec["ttft_s"]) / max(n - 1, 1)
    return float(rec["ttft_s"] + per_token * (min(k, n) - 1))


def iter_tasks(tasks: Sequence[str]) -> Iterator[str]:
    for t in tasks:
        if t not in CHAT_TASKS:
            raise ConfigError(f"The chat protocol has the tasks {', '.join(CHAT_TASKS)}, not "
                              f"{t!r}.", param="task")
        yield t


def _model_sha(path: Path) -> str:
    """The model file's SHA-256, hashed once per process and file version (the stand-in's
    file is 1.1 GB: seconds per hash, and every task's records are keyed by it)."""
    st = path.stat()
    return _sha_of(str(path), st.st_size, st.st_mtime_ns)


@functools.cache
def _sha_of(path: str, size: int, mtime_ns: int) -> str:
    from tandem.datadirs import file_sha256

    return file_sha256(Path(path))


def collect_local(task: str, items: Sequence[Item], local_model: str, cache_dir: Path,
                  progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """The local tier's records for ``items`` (measured now unless cached)."""
    from tandem.catalog import resolve_model
    from tandem.local.engine import LocalEngine
    from tandem.settings import load_settings

    path, chat_format = resolve_model(local_model)
    cache = ItemCache(cache_dir, _model_sha(path), f"{task}-{CHAT_PROTOCOL}")
    if all(it.key in cache.load() for it in items):
        return run_local(None, items, cache, progress)
    engine = LocalEngine(load_settings(keep_alive_s=None), path, chat_format)
    engine.start()
    try:
        return run_local(engine, items, cache, progress)
    finally:
        engine.close()


def collect(task: str, items: Sequence[Item], local_model: str, cloud_model: str,
            cloud_url: str | None, cache_dir: Path, progress: Progress | None = None
            ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Both tiers' records for ``items`` (measured now unless cached).

    The local model runs first, alone; then the cloud (the stand-in serving ``cloud_model``
    unless ``cloud_url`` is given): two llama.cpp processes generating at once on a small
    machine would slow each other and distort the recorded times.
    """
    from tandem.catalog import resolve_model
    from tandem.cloud.standin import StandinCloud

    local = collect_local(task, items, local_model, cache_dir, progress)
    if cloud_url is not None:
        name = "url-" + hashlib.sha256(cloud_url.encode()).hexdigest()
        cloud_cache = ItemCache(cache_dir, name, f"{task}-{CHAT_PROTOCOL}")
        return local, run_cloud(cloud_url, items, cloud_cache, progress)
    cloud_path, _ = resolve_model(cloud_model)
    cloud_cache = ItemCache(cache_dir, _model_sha(cloud_path), f"{task}-{CHAT_PROTOCOL}")
    if all(it.key in cloud_cache.load() for it in items):
        return local, run_cloud("http://unused", items, cloud_cache, progress)
    with StandinCloud(cloud_model, port=0, n_ctx=2048) as standin:
        return local, run_cloud(standin.base_url, items, cloud_cache, progress)
