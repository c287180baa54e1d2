"""``tandem evaluate``: quality, size and speed of GGUF models, cached per model file hash.

Sections (``--tasks``): ``ppl`` (WikiText-2 test perplexity, llama-perplexity protocol), ``kld``
(KL divergence from a reference model at the same positions; needs ``--ref``), ``arc_easy`` and
``piqa`` (multiple choice by log-likelihood), ``perf`` (load, prefill and decode speed, peak RSS,
in a fresh process). Each section's result is cached under the model file's SHA-256 and the
section's settings, so re-running (or building a frontier over many files) only measures what is
new. Perplexity and KLD run chunk by chunk through every pending model and the reference at once:
the reference's distribution for a chunk is computed once and compared with each model, and
nothing larger than one chunk's logits is ever held.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.datadirs import cache_dir, file_sha256
from tandem.errors import ConfigError
from tandem.optimize.gguf_io import summarize
from tandem.optimize.metrics import Choice, StreamStats, accuracy, choose, chunks

ALL_TASKS = ("ppl", "kld", "arc_easy", "piqa", "perf")
MC_FILES = {"arc_easy": "arc_easy_dev.jsonl", "piqa": "piqa_dev.jsonl"}
PPL_FILE = "wikitext2_test.raw"
DATA_ENV = "TANDEM_DATA_DIR"

Progress = Callable[[str, int, int], None]  # (phase label, done, total)


@dataclass(frozen=True)
class EvalOptions:
    data_dir: Path
    tasks: tuple[str, ...] = ALL_TASKS
    n_ctx: int = 512
    chunks: int | None = None  # perplexity/KLD chunks (None: the whole text)
    items: int | None = None  # multiple-choice items per task (None: all)
    perf_ctx: int = 2048
    n_threads: int | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in ALL_TASKS]
        if unknown:
            raise ConfigError(f"Unknown task(s) {unknown}; choose from {', '.join(ALL_TASKS)}.",
                              param="tasks")
        for name in [PPL_FILE] * bool({"ppl", "kld"} & set(self.tasks)) + [
            MC_FILES[t] for t in self.tasks if t in MC_FILES
        ]:
            if not (self.data_dir / name).is_file():
                raise ConfigError(
                    f"Evaluation data {name} not found in {self.data_dir}: pass --data-dir DIR "
                    f"(or set {DATA_ENV}) to the folder that holds it.",
                    param="data_dir",
                )


class ResultCache:
    """One JSON file per model hash: ``{section key: result}`` (``$TANDEM_EVAL_CACHE`` moves it)."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory if directory is not None else cache_dir("evaluate")

    def _file(self, sha: str) -> Path:
        return self.directory / f"{sha[:32]}.json"

    def get(self, sha: str, key: str) -> Any:
        try:
            return json.loads(self._file(sha).read_text()).get(key)
        except (OSError, ValueError):
            return None

    def put(self, sha: str, key: str, value: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._file(sha)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = value
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)


def _short_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@dataclass
class _Model:
    path: Path
    sha: str
    result: dict[str, Any]


def _describe(path: Path) -> _Model:
    summary = summarize(path)
    sha = file_sha256(path)
    model = summary.to_dict()
    model.update({"path": str(path), "name": path.stem, "sha256": sha,
                  "type_counts": summary.type_counts()})
    model.pop("tensors", None)
    return _Model(path, sha, {"model": model})


def evaluate(
    models: Sequence[Path],
    options: EvalOptions,
    *,
    reference: Path | None = None,
    cache: ResultCache | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Evaluate each model; returns one result dict per model, in order."""
    if not models:
        raise ConfigError("No models to evaluate.")
    cache = cache or ResultCache()
    started = time.perf_counter()
    todo = [_describe(p) for p in models]
    ref = None if reference is None else _describe(reference)
    if "kld" in options.tasks and ref is None:
        raise ConfigError("KL divergence needs a reference model: pass --ref REF.gguf "
                          "(e.g. the F32 output of `tandem dequantize`), or leave out kld.",
                          param="ref")
    for m in todo:
        m.result["reference"] = None if ref is None else {
            "path": str(ref.path), "name": ref.path.stem, "sha256": ref.sha}
        m.result["is_reference"] = ref is not None and m.sha == ref.sha
        m.result["limit"] = {"chunks": options.chunks, "items": options.items}
    if {"ppl", "kld"} & set(options.tasks):
        _perplexity(todo, ref, options, cache, progress)
    for task in MC_FILES:
        if task in options.tasks:
            _multiple_choice(todo, task, options, cache, progress)
    if "perf" in options.tasks:
        _perf(todo, options, cache, progress)
    for m in todo:
        m.result["elapsed_s"] = time.perf_counter() - started
    return [m.result for m in todo]


def _ppl_key(options: EvalOptions, ref: _Model | None, text_hash: str) -> str:
    ref_part = ref.sha[:16] if ref is not None and "kld" in options.tasks else "-"
    return f"ppl|{text_hash}|ctx{options.n_ctx}|chunks{options.chunks}|ref{ref_part}"


def _perplexity(todo: list[_Model], ref: _Model | None, options: EvalOptions,
                cache: ResultCache, progress: Progress | None) -> None:
    from tandem.scoring import Scorer

    text_path = options.data_dir / PPL_FILE
    key = _ppl_key(options, ref, _short_hash(text_path))
    pending = []
    for m in todo:
        hit = cache.get(m.sha, key) if options.use_cache else None
        if hit is not None:
            m.result["perplexity"], m.result["kld"] = hit["perplexity"], hit["kld"]
        else:
            pending.append(m)
    if not pending:
        return
    text = text_path.read_text(encoding="utf-8")
    with_kld = "kld" in options.tasks and ref is not None
    ref_scorer = Scorer(ref.path, n_ctx=options.n_ctx, n_threads=options.n_threads) \
        if with_kld and ref is not None else None
    scorers = []
    try:
        for m in pending:
            if ref_scorer is not None and m.sha == ref.sha:  # type: ignore[union-attr]
                scorers.append(ref_scorer)
            else:
                scorers.append(Scorer(m.path, n_ctx=options.n_ctx, n_threads=options.n_threads))
        tokens = scorers[0].tokenize(text, special=True)
        probe = scorers[0].tokenize(text[:4000], special=True)
        for m, s in zip(pending, scorers, strict=True):
            if s.tokenize(text[:4000], special=True) != probe:
                raise ConfigError(f"{m.path.name} tokenizes differently from "
                                  f"{pending[0].path.name}: evaluate them separately.")
        if ref_scorer is not None and ref_scorer.n_vocab != scorers[0].n_vocab:
            raise ConfigError("The reference has another vocabulary: KL divergence needs the "
                              "same tokenizer.", param="ref")
        _stream(pending, scorers, ref_scorer, tokens, options, progress)
    finally:
        for s in {id(x): x for x in [*scorers, ref_scorer] if x is not None}.values():
            s.close()
    for m in pending:
        cache.put(m.sha, key, {"perplexity": m.result["perplexity"], "kld": m.result["kld"]})


def _stream(pending: list[_Model], scorers: list[Any], ref_scorer: Any, tokens: list[int],
            options: EvalOptions, progress: Progress | None) -> None:
    n_ctx = options.n_ctx
    first = n_ctx // 2
    lead = scorers[0]
    todo = chunks(tokens, n_ctx, bos=lead.bos if lead.add_bos else None, limit=options.chunks)
    if not todo:
        raise ConfigError(f"The perplexity text has fewer than {n_ctx} tokens.")
    stats = [StreamStats() for _ in pending]
    for i, chunk in enumerate(todo):
        ref_rows = None if ref_scorer is None else ref_scorer.logprobs(chunk)[first : n_ctx - 1]
        for st, s in zip(stats, scorers, strict=True):
            rows = s.logprobs(chunk)[first : n_ctx - 1] if ref_rows is None or s is not ref_scorer \
                else ref_rows
            st.add(rows, chunk[first + 1 :], ref_rows)
        if progress is not None:
            progress("perplexity" + (" + KLD" if ref_scorer is not None else ""), i + 1, len(todo))
    for m, st in zip(pending, stats, strict=True):
        m.result["perplexity"] = {**st.perplexity(), "n_ctx": n_ctx}
        m.result["kld"] = st.divergence()


def load_items(path: Path, limit: int | None) -> list[Choice]:
    items = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                items.append(Choice.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}:{n}: not a multiple-choice item "
                                  f'{{"query", "choices", "gold"}} ({exc}).') from exc
            if limit is not None and len(items) >= limit:
                break
    return items


def _multiple_choice(todo: list[_Model], task: str, options: EvalOptions, cache: ResultCache,
                     progress: Progress | None) -> None:
    from tandem.scoring import Scorer

    path = options.data_dir / MC_FILES[task]
    key = f"{task}|{_short_hash(path)}|items{options.items}"
    items: list[Choice] | None = None
    for m in todo:
        hit = cache.get(m.sha, key) if options.use_cache else None
        if hit is None:
            items = items if items is not None else load_items(path, options.items)
            scorer = Scorer(m.path, n_ctx=options.n_ctx, n_threads=options.n_threads)
            try:
                rows = []
                for i, item in enumerate(items):
                    conts = item.continuations()
                    lls = scorer.continuation_logprob(
                        scorer.tokenize(item.context(), special=True),
                        [scorer.tokenize(c) for c in conts],
                    )
                    rows.append((item.gold, *choose(lls, conts)))
                    if progress is not None:
                        progress(f"{task} · {m.path.name}", i + 1, len(items))
            finally:
                scorer.close()
            hit = accuracy(rows)
            cache.put(m.sha, key, hit)
        m.result.setdefault("tasks", {})[task] = hit


def _perf(todo: list[_Model], options: EvalOptions, cache: ResultCache,
          progress: Progress | None) -> None:
    from tandem.optimize.perf import measure_in_subprocess

    key = f"perf3|ctx{options.perf_ctx}|threads{options.n_threads or os.cpu_count()}"
    for i, m in enumerate(todo):
        hit = cache.get(m.sha, key) if options.use_cache else None
        if hit is None:
            hit = measure_in_subprocess(m.path, n_ctx=options.perf_ctx,
                                        n_threads=options.n_threads)
            cache.put(m.sha, key, hit)
        m.result["speed"] = {k: hit[k] for k in ("prefill_tps", "decode_tps", "load_s")}
        m.result["memory"] = {"peak_rss_mb": hit["peak_rss_mb"], "n_ctx": hit["n_ctx"]}
        if progress is not None:
            progress("speed and memory", i + 1, len(todo))
