"""``tandem bench runtime``: bare llama-cpp-python vs LocalEngine vs the HTTP gateway.

Each mode runs in a fresh process (so cold start and peak RSS are its own) on the same model,
thread count, prompts and sampler. The baseline (bare) is measured in the same run and every
figure is also reported as a ratio to it.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from tandem.settings import Settings

SYSTEM = {"role": "system", "content": "You are a concise assistant."}
QUESTIONS = [
    "Name three uses of copper.",
    "Why is the sky blue?",
    "Give a tip for learning to cook.",
    "What does a compiler do?",
    "Describe a cat in one sentence.",
    "How do plants make food?",
    "What is a prime number?",
    "Suggest a name for a boat.",
    "Why do we sleep?",
    "What is the capital of Italy?",
]
LONG_TEXT = " ".join(
    f"Sentence {i} tells of rivers, hills, towns and the weather of a quiet day." for i in range(40)
)


def _conf(quick: bool) -> dict[str, int]:
    return {"decode_tokens": 48 if quick else 128, "repeats": 3 if quick else 5, "turns": 10}


# -- workloads shared by the in-process modes -------------------------------------------------


def _messages(question: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": question}]


class _Timer:
    """Collects first-token and per-token times of one streamed generation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.n = 0

    def token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.n += 1

    def result(self) -> dict[str, float]:
        end = time.perf_counter()
        first = self.first or end
        decode_s = end - first
        return {
            "ttft_s": first - self.start,
            "decode_tok_s": (self.n - 1) / decode_s if self.n > 1 and decode_s > 0 else 0.0,
        }


def _measure(
    stream: Callable[[list[dict[str, str]], int], Iterator[Any]],
    conf: dict[str, int],
    long_tokens: int,
) -> dict[str, Any]:
    """Median TTFT and decode speed over fresh questions, then prefill speed.

    Prefill speed is the long prompt's token count over its time to first token; every mode
    sees the same KV-cache state (the shared system prompt cached), so the figures compare.
    """
    runs = []
    for i in range(conf["repeats"]):
        timer = _Timer()
        for _ in stream(_messages(QUESTIONS[i % len(QUESTIONS)]), conf["decode_tokens"]):
            timer.token()
        runs.append(timer.result())
    timer = _Timer()
    for _ in stream(_messages(LONG_TEXT), 1):
        timer.token()
    return {
        "ttft_ms": 1000 * statistics.median(r["ttft_s"] for r in runs),
        "decode_tok_s": statistics.median(r["decode_tok_s"] for r in runs),
        "long_prompt_tokens": long_tokens,
        "prefill_tok_s": long_tokens / timer.result()["ttft_s"],
    }


def _bare(settings: Settings, conf: dict[str, int], model: Path) -> dict[str, Any]:
    from llama_cpp import Llama

    from tandem.local.chat import PromptRenderer
    from tandem.local.decode import MIN_P, TOP_K

    llm: Any = Llama(
        str(model),
        n_ctx=settings.n_ctx,
        n_batch=settings.n_batch,
        n_threads=settings.n_threads or os.cpu_count(),
        verbose=False,
    )
    renderer = PromptRenderer.for_model(llm, None)

    def tokens(messages: list[dict[str, str]]) -> list[int]:
        p = renderer.render(messages)
        return list(llm.tokenize(p.text.encode(), add_bos=p.add_bos, special=True))

    def stream(messages: list[dict[str, str]], n: int) -> Iterator[int]:
        # Same sampler as LocalEngine at temperature 0; EOS ignored so lengths match.
        gen = llm.generate(tokens(messages), temp=0.0, top_k=TOP_K, min_p=MIN_P)
        for i, tok in enumerate(gen):
            yield tok
            if i + 1 >= n:
                break
        gen.close()

    first = _cold_first_token(lambda: next(stream(_messages(QUESTIONS[0]), 1)))
    return {**first, **_measure(stream, conf, len(tokens(_messages(LONG_TEXT))))}


def _engine(settings: Settings, conf: dict[str, int], model: Path) -> dict[str, Any]:
    from tandem.events import GenerationParams, TokenEvent
    from tandem.local.engine import LocalEngine

    engine = LocalEngine(settings.model_copy(update={"keep_alive_s": None}), model)

    def stream(messages: list[dict[str, str]], n: int) -> Iterator[TokenEvent]:
        params = GenerationParams(max_tokens=n, temperature=0.0)
        for ev in engine.stream_sync(messages, params):
            if isinstance(ev, TokenEvent):
                yield ev

    def first_token() -> None:
        engine.start()
        next(stream(_messages(QUESTIONS[0]), 1))

    first = _cold_first_token(first_token)
    long_tokens = engine.count_tokens(_messages(LONG_TEXT)) or 0
    result = {**first, **_measure(stream, conf, long_tokens), "conversation": _conversation(engine)}
    engine.close()
    return result


def _conversation(engine: Any) -> dict[str, Any]:
    """A 10-turn conversation: tokens prefilled vs tokens new in each turn (turns 2..10)."""
    from tandem.events import Finish, GenerationParams, TokenEvent

    history: list[dict[str, str]] = [SYSTEM]
    turns: list[dict[str, Any]] = []
    last_total: int | None = None
    for question in QUESTIONS:
        history.append({"role": "user", "content": question})
        text, finish = [], None
        for ev in engine.stream_sync(history, GenerationParams(max_tokens=40, temperature=0.0)):
            if isinstance(ev, TokenEvent):
                text.append(ev.text)
            elif isinstance(ev, Finish):
                finish = ev
        assert finish is not None and finish.prompt_tokens is not None
        if last_total is not None:
            turns.append(
                {
                    "prompt": finish.prompt_tokens,
                    "new": finish.prompt_tokens - last_total,
                    "prefilled": finish.prefill_tokens,
                }
            )
        last_total = finish.prompt_tokens + finish.completion_tokens
        history.append({"role": "assistant", "content": "".join(text)})
    new = sum(t["new"] for t in turns)
    prefilled = sum(t["prefilled"] or 0 for t in turns)
    return {
        "turns": turns,
        "new_tokens": new,
        "prefilled_tokens": prefilled,
        "prefill_over_new": prefilled / new if new else None,
    }


def _cold_first_token(first: Callable[[], Any]) -> dict[str, float]:
    """Process start → first token; the process start time comes from the parent."""
    first()
    started = float(os.environ.get("TANDEM_BENCH_T0", time.time()))
    return {"cold_start_s": time.time() - started}


# -- the HTTP mode: a real `tandem serve` process, streamed over loopback -------------------------


def _http(conf: dict[str, int], port: int, long_tokens: int) -> dict[str, Any]:
    import httpx

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem", "serve", "--no-standin", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TANDEM_KEEP_ALIVE_S": "86400"},
    )
    try:
        with httpx.Client(timeout=60) as client:

            def stream(messages: list[dict[str, str]], n: int) -> Iterator[str]:
                body = {
                    "messages": messages,
                    "max_tokens": n,
                    "temperature": 0.0,
                    "stream": True,
                    "tandem": {"route": "local"},
                }
                with client.stream("POST", url, json=body) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {") and '"content":"' in line:
                            yield line

            cold = _wait_first_token(stream, t0)
            result = {"cold_start_s": cold, **_measure(stream, conf, long_tokens)}
        result["peak_rss_mib"] = _vm_hwm_mib(proc.pid)
        return result
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_first_token(stream: Callable[..., Iterator[str]], t0: float) -> float:
    import httpx

    while True:
        try:
            next(stream(_messages(QUESTIONS[0]), 1))
            return time.time() - t0
        except (httpx.HTTPError, StopIteration):
            time.sleep(0.02)


def _vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- orchestration ------------------------------------------------------------------------------


def _child(mode: str, quick: bool) -> None:
    from tandem.catalog import resolve_model
    from tandem.settings import load_settings

    settings = load_settings()
    model, _ = resolve_model(settings.local_model)
    result = (_bare if mode == "bare" else _engine)(settings, _conf(quick), model)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _run_child(mode: str, quick: bool) -> dict[str, Any]:
    env = {**os.environ, "TANDEM_BENCH_T0": repr(time.time())}
    out = subprocess.run(
        [sys.executable, "-m", "bench.runtime", mode, "quick" if quick else "full"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run_runtime_bench(
    settings: Settings, quick: bool, out: Path, console: Console
) -> dict[str, Any]:
    """Run all three modes, write JSON to ``out`` and print the ratios to bare."""
    from tandem.net import free_port

    modes: dict[str, dict[str, Any]] = {}
    for mode in ("bare", "engine"):
        console.print(f"[dim]bench runtime: {mode}…[/dim]")
        modes[mode] = _run_child(mode, quick)
    console.print("[dim]bench runtime: http…[/dim]")
    modes["http"] = _http(_conf(quick), free_port(), modes["bare"]["long_prompt_tokens"])
    result = {
        "model": settings.local_model,
        "n_threads": settings.n_threads or os.cpu_count(),
        "quick": quick,
        "modes": modes,
        "ratios": _ratios(modes),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _print(result, console)
    return result


def _ratios(modes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    bare = modes["bare"]
    ratios: dict[str, Any] = {}
    for mode in ("engine", "http"):
        m = modes[mode]
        ratios[mode] = {
            "decode_vs_bare": m["decode_tok_s"] / bare["decode_tok_s"],
            "ttft_overhead_ms": m["ttft_ms"] - bare["ttft_ms"],
            "peak_rss_vs_bare": m["peak_rss_mib"] / bare["peak_rss_mib"],
            "cold_start_vs_bare": m["cold_start_s"] / bare["cold_start_s"],
            "prefill_vs_bare": m["prefill_tok_s"] / bare["prefill_tok_s"],
        }
    ratios["conversation_prefill_over_new"] = modes["engine"]["conversation"]["prefill_over_new"]
    return ratios


def _print(result: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"runtime ({result['model']}, {result['n_threads']} threads)")
    for col in ("mode", "decode tok/s", "prefill tok/s", "TTFT ms", "cold start s", "peak RSS MiB"):
        table.add_column(col)
    for mode, m in result["modes"].items():
        table.add_row(
            mode,
            f"{m['decode_tok_s']:.1f}",
            f"{m['prefill_tok_s']:.0f}",
            f"{m['ttft_ms']:.1f}",
            f"{m['cold_start_s']:.2f}",
            f"{m['peak_rss_mib']:.0f}",
        )
    console.print(table)
    console.print_json(data=result["ratios"])


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2] == "quick")
