"""``tandem bench structured``: what constraining the local model's output costs.

- Decode speed (tokens per second of the decode phase) of SmolLM2 on extraction prompts, in
  three modes interleaved over the repeats of one run: unconstrained (the baseline), the
  gateway's llguidance mask (``tandem.local.constrain``, through the logits-processor hook)
  and llama.cpp's GBNF grammar sampler on llama-cpp-python's JSON-schema-to-GBNF conversion
  (the usual way to constrain llama.cpp). Same model, prompt through the chat template,
  greedy decoding and the gateway's sampling filters in every mode; with each constrained
  mode's share of answers that parse and match the schema.
- Schema compile time for a 20-field schema, from the request's ``response_format`` to a
  grammar state ready for the first token: cold (a schema never seen) and cached (the same
  schema again).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from tandem.local.batch import MIN_P, TOP_K
from tandem.local.chat import PromptRenderer
from tandem.local.constrain import Vocabulary
from tandem.local.tokenizer import tokenize
from tandem.structured import OutputFormat, parse_response_format

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
ORDER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer": {"type": "string"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"product": {"type": "string"}, "quantity": {"type": "integer"}},
                "required": ["product", "quantity"],
            },
        },
        "paid": {"type": "boolean"},
    },
    "required": ["customer", "items", "paid"],
}
CASES: list[tuple[str, dict[str, Any]]] = [
    ("Extract the person as JSON: Maria Rossi is 31 years old and lives in Rome.", PERSON),
    ("Extract the person as JSON: Tom Becker, 58, a baker from Hamburg.", PERSON),
    ("Turn this order into JSON: Anna bought 2 lamps and 1 rug, paid in cash.", ORDER),
    ("Turn this order into JSON: Jo wants 3 pens, 10 notebooks; not paid yet.", ORDER),
]
TYPES: list[dict[str, Any]] = [
    {"type": "string"},
    {"type": "integer", "minimum": 0},
    {"type": "number"},
    {"type": "boolean"},
    {"type": "string", "enum": ["low", "medium", "high"]},
    {"type": "string", "format": "date"},
    {"type": "array", "items": {"type": "string"}, "maxItems": 5},
    {"type": "string", "maxLength": 40},
]


def form_schema(fields: int = 20, tag: str = "") -> dict[str, Any]:
    """A flat form of ``fields`` typed fields (``tag`` makes the schema new to any cache)."""
    properties = {f"field_{i}{tag}": TYPES[i % len(TYPES)] for i in range(fields)}
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def _fmt(schema: dict[str, Any]) -> OutputFormat:
    fmt = parse_response_format({"type": "json_schema",
                                 "json_schema": {"name": "bench", "schema": schema}})
    assert fmt is not None
    return fmt


def _decode(llm: Any, tokens: list[int], max_tokens: int, mode: str,
            vocabulary: Vocabulary, fmt: OutputFormat) -> tuple[float, int, str]:
    """(decode seconds after the first token, tokens, text) of one greedy generation."""
    import llama_cpp

    processors = grammar = constraint = None
    if mode == "llguidance":
        constraint = vocabulary.constraint(fmt)
        processors = llama_cpp.LogitsProcessorList([constraint.mask_logits])
    elif mode == "gbnf":
        make = llama_cpp.LlamaGrammar.from_json_schema  # type: ignore[attr-defined]
        grammar = make(fmt.schema_json, verbose=False)
    out: list[int] = []
    first: float | None = None
    generator = llm.generate(tokens, temp=0.0, top_k=TOP_K, min_p=MIN_P, top_p=1.0,
                             repeat_penalty=1.0, logits_processor=processors, grammar=grammar)
    for token in generator:
        if first is None:
            first = time.perf_counter()
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        out.append(token)
        if constraint is not None and (not constraint.accept(token) or constraint.done):
            break
        if len(out) >= max_tokens:
            break
    generator.close()
    ended = time.perf_counter()
    return ended - (first or ended), len(out), llm.detokenize(out).decode("utf-8", "replace")


def _compile_ms(vocabulary: Vocabulary, runs: int) -> dict[str, Any]:
    cold, cached = [], []
    for i in range(runs):
        schema = form_schema(20, tag=f"_{i}_{time.monotonic_ns()}")
        started = time.perf_counter()
        vocabulary.constraint(_fmt(schema))
        cold.append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        vocabulary.constraint(_fmt(schema))
        cached.append((time.perf_counter() - started) * 1e3)
    return {
        "fields": 20,
        "cold_ms": {"p50": round(statistics.median(cold), 2), "max": round(max(cold), 2)},
        "cached_ms": {"p50": round(statistics.median(cached), 3), "max": round(max(cached), 3)},
    }


def run_structured_bench(model_path: Path, chat_format: str | None, threads: int, quick: bool,
                         out: Path, console: Console) -> dict[str, Any]:
    from llama_cpp import Llama

    llm = Llama(str(model_path), n_ctx=2048, n_threads=threads, verbose=False)
    renderer = PromptRenderer.for_model(llm._model, chat_format)
    vocabulary = Vocabulary(llm._model)
    started = time.perf_counter()
    vocabulary.tokenizer  # noqa: B018 (built once per model load, timed here)
    tokenizer_s = time.perf_counter() - started
    modes = ("unconstrained", "llguidance", "gbnf")
    repeats = 1 if quick else 3
    max_tokens = 64
    rates: dict[str, list[float]] = {m: [] for m in modes}
    valid: dict[str, list[bool]] = {m: [] for m in modes}
    samples: dict[str, str] = {}
    for _ in range(repeats):
        for prompt, schema in CASES:
            fmt = _fmt(schema)
            rendered = renderer.render([{"role": "user", "content": prompt}], "")
            tokens = tokenize(llm, rendered)
            for mode in modes:  # interleaved: drift on a noisy machine hits every mode alike
                seconds, n, text = _decode(llm, tokens, max_tokens, mode, vocabulary, fmt)
                if n > 1 and seconds > 0:
                    rates[mode].append((n - 1) / seconds)
                valid[mode].append(not fmt.problems(text))
                samples.setdefault(f"{mode}: {prompt[:40]}", text)
    speed = {m: round(statistics.median(rates[m]), 1) for m in modes}
    result: dict[str, Any] = {
        "model": model_path.name,
        "threads": threads,
        "generations_per_mode": len(CASES) * repeats,
        "max_tokens": max_tokens,
        "decode_tokens_per_s": speed,
        "ratio_to_unconstrained": {
            m: round(speed[m] / speed["unconstrained"], 3) for m in modes[1:]
        },
        "valid_rate": {m: round(sum(v) / len(v), 3) for m, v in valid.items()},
        "compile": _compile_ms(vocabulary, 5 if quick else 20),
        "tokenizer_build_s": round(tokenizer_s, 3),
        "samples": samples,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    console.print(
        f"decode tok/s unconstrained {speed['unconstrained']}, llguidance {speed['llguidance']} "
        f"({result['ratio_to_unconstrained']['llguidance']}x), GBNF {speed['gbnf']} "
        f"({result['ratio_to_unconstrained']['gbnf']}x); valid {result['valid_rate']}; "
        f"20-field compile cold p50 {result['compile']['cold_ms']['p50']} ms, cached "
        f"{result['compile']['cached_ms']['p50']} ms"
    )
    return result
