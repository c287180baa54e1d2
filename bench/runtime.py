"""``tandem bench runtime``: bare llama-cpp-python vs LocalEngine vs the HTTP gateway.

Same model, thread count, prompts and sampler everywhere. Each mode runs in a fresh process of
its own (one llama.cpp context per process, as in production: two contexts in one process slow
each other through their OpenMP thread teams), so cold start and peak RSS are its own. Rounds of
bare → engine → HTTP repeat and the medians are reported, so drift in machine speed hits all
modes alike. The baseline (bare) is measured in the same run; figures are also ratios to it.

When ``make llama-server`` has built llama.cpp's own server, each round also streams the same
requests from it (one slot, the gateway's context, threads and batch size, flash attention off
as the engine runs): what a C++ HTTP server on the same library costs over bare decoding on this
machine, the anchor for the gateway's own ratio. One streamed token is one write to a socket and
a wake-up of the client on the same cores, whatever the server is written in.
"""

from __future__ import annotations

import json
import operator
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.parallel import LLAMA_SERVER
from tandem.local.memory import peak_rss_kib
from tandem.settings import Settings

# One stream through the HTTP gateway against bare llama-cpp-python decoding of the same model.
DECODE_TARGET = 0.93

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
    return {
        "decode_tokens": 48 if quick else 128,
        "repeats": 3 if quick else 5,
        "rounds": 1 if quick else 5,
    }


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


Stream = Callable[[list[dict[str, str]], int], Iterator[Any]]


def _time_stream(stream: Stream, messages: list[dict[str, str]], n: int) -> dict[str, float]:
    timer = _Timer()
    for _ in stream(messages, n):
        timer.token()
    return timer.result()


def _speed(streams: dict[str, Stream], conf: dict[str, int], long_tokens: int) -> dict[str, Any]:
    """Median TTFT and decode speed over fresh questions, and prefill speed, per mode.

    Prefill speed is the long prompt's token count over its time to first token; every mode
    sees the same KV-cache state (only the shared system prompt cached), so the figures compare.
    """
    names = list(streams)
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    prefill: dict[str, list[float]] = {n: [] for n in names}
    for i in range(conf["repeats"]):
        order = names[i % len(names) :] + names[: i % len(names)]
        question = _messages(QUESTIONS[i % len(QUESTIONS)])
        for name in order:
            runs[name].append(_time_stream(streams[name], question, conf["decode_tokens"]))
        for name in order:
            ttft = _time_stream(streams[name], _messages(LONG_TEXT), 1)["ttft_s"]
            prefill[name].append(long_tokens / ttft)
    return {
        name: {
            "ttft_ms": 1000 * statistics.median(r["ttft_s"] for r in runs[name]),
            "decode_tok_s": statistics.median(r["decode_tok_s"] for r in runs[name]),
            "prefill_tok_s": statistics.median(prefill[name]),
        }
        for name in names
    }


def _bare_stream(settings: Settings, model: Path) -> tuple[Stream, int]:
    """Plain llama-cpp-python: ``Llama.generate`` on the chat-templated prompt."""
    from llama_cpp import Llama

    from tandem.local.batch import MIN_P, TOP_K
    from tandem.local.chat import PromptRenderer

    llm: Any = Llama(
        str(model),
        n_ctx=settings.n_ctx,
        n_batch=settings.n_batch,
        n_threads=settings.n_threads or os.cpu_count(),
        verbose=False,
    )
    renderer = PromptRenderer.for_model(llm._model, None)

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

    return stream, len(tokens(_messages(LONG_TEXT)))


def _engine_stream(engine: Any) -> Stream:
    from tandem.events import GenerationParams, TokenEvent

    def stream(messages: list[dict[str, str]], n: int) -> Iterator[Any]:
        params = GenerationParams(max_tokens=n, temperature=0.0)
        for ev in engine.stream_sync(messages, params):
            if isinstance(ev, TokenEvent):
                yield ev

    return stream


def _http_stream(client: Any, url: str) -> Stream:
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

    return stream


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
            new = finish.prompt_tokens - last_total
            turns.append(
                {"prompt": finish.prompt_tokens, "new": new, "prefilled": finish.prefill_tokens}
            )
        last_total = finish.prompt_tokens + finish.completion_tokens
        history.append({"role": "assistant", "content": "".join(text)})
    new_total = sum(t["new"] for t in turns)
    prefilled = sum(t["prefilled"] or 0 for t in turns)
    return {
        "turns": turns,
        "new_tokens": new_total,
        "prefilled_tokens": prefilled,
        "prefill_over_new": prefilled / new_total if new_total else None,
    }


# -- one fresh process per mode and round ------------------------------------------------------


def _child(mode: str, quick: bool) -> None:
    """One round of one in-process mode: cold start, speed, peak RSS; prints JSON."""
    from tandem.catalog import resolve_model
    from tandem.local.engine import LocalEngine
    from tandem.settings import load_settings

    settings = load_settings()
    model, _ = resolve_model(settings.local_model)
    engine = None
    if mode == "bare":
        stream, long_tokens = _bare_stream(settings, model)
    else:
        engine = LocalEngine(settings.model_copy(update={"keep_alive_s": None}), model)
        engine.start()
        stream = _engine_stream(engine)
    next(iter(stream(_messages(QUESTIONS[0]), 1)))
    result: dict[str, Any] = {"cold_start_s": time.time() - float(os.environ["TANDEM_BENCH_T0"])}
    if engine is not None:
        long_tokens = engine.count_tokens(_messages(LONG_TEXT)) or 0
    result.update(_speed({mode: stream}, _conf(quick), long_tokens)[mode])
    result["long_prompt_tokens"] = long_tokens
    if engine is not None:
        result["conversation"] = _conversation(engine)
    result["peak_rss_mib"] = peak_rss_kib() / 1024
    print(json.dumps(result))
    os._exit(0)  # skip interpreter teardown of llama.cpp threads


def _run_child(mode: str, quick: bool, lib_path: Path | None = None) -> dict[str, Any]:
    env = {**os.environ, "TANDEM_BENCH_T0": repr(time.time())}
    if lib_path is not None:  # llama-cpp-python loads its libraries from here instead
        env["LLAMA_CPP_LIB_PATH"] = str(lib_path)
    out = subprocess.run(
        [sys.executable, "-m", "bench.runtime", mode, "quick" if quick else "full"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


class _ServerProcess:
    """A real HTTP server process (``tandem serve`` or llama-server); its cold start is
    Popen → first streamed token."""

    def __init__(self, port: int, cmd: list[str], env: dict[str, str] | None = None):
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self.name = Path(cmd[0]).name if cmd[0] != sys.executable else "tandem serve"
        self.t0 = time.time()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )

    def cold_start(self, stream: Stream) -> float:
        import httpx

        while True:
            try:
                next(iter(stream(_messages(QUESTIONS[0]), 1)))
                return time.time() - self.t0
            except (httpx.HTTPError, StopIteration):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited during start-up") from None
                time.sleep(0.02)

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _gateway_cmd(port: int) -> list[str]:
    return [sys.executable, "-m", "tandem", "serve", "--no-standin", "--port", str(port)]


def _llama_server_cmd(settings: Settings, port: int) -> list[str]:
    from tandem.catalog import resolve_model

    model, _ = resolve_model(settings.local_model)
    threads = str(settings.n_threads or os.cpu_count() or 1)
    # No prompt cache in RAM (--cache-ram 0): like bare llama-cpp-python and the engine, the
    # server then reuses only the prefix its one slot holds, so the prefill figures compare.
    return [str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-np", "1", "-c", str(settings.n_ctx), "-t", threads, "-tb", threads,
            "-b", str(settings.n_batch), "--jinja", "-fa", "off", "--cache-ram", "0"]  # fmt: skip


def _http_round(mode: str, quick: bool, long_tokens: int, settings: Settings) -> dict[str, Any]:
    """One round of an HTTP mode: ``http`` (the gateway) or ``llama_server``."""
    import httpx

    from tandem.net import free_port

    port = free_port()
    if mode == "llama_server":
        server = _ServerProcess(port, _llama_server_cmd(settings, port))
    else:
        server = _ServerProcess(
            port, _gateway_cmd(port), {**os.environ, "TANDEM_KEEP_ALIVE_S": "86400"}
        )
    # llama-server closes a kept-alive connection after a few requests without saying so in
    # its streamed responses: it gets a new connection per request (a loopback connect, well
    # under a millisecond of its time to first token).
    limits = httpx.Limits(max_keepalive_connections=0 if mode == "llama_server" else None)
    try:
        with httpx.Client(timeout=120, limits=limits) as client:
            stream = _http_stream(client, server.url)
            result: dict[str, Any] = {"cold_start_s": server.cold_start(stream)}
            result.update(_speed({mode: stream}, _conf(quick), long_tokens)[mode])
        result["peak_rss_mib"] = server.peak_rss_mib()
        return result
    finally:
        server.stop()


def _median_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(rounds[-1])
    for key, value in rounds[0].items():
        if isinstance(value, float):
            merged[key] = statistics.median(r[key] for r in rounds)
    merged["rounds"] = len(rounds)
    return merged


# -- orchestration ------------------------------------------------------------------------------


def run_runtime_bench(
    settings: Settings, quick: bool, out: Path, console: Console, compare_lib: Path | None = None
) -> dict[str, Any]:
    """Rounds of bare → engine → HTTP, each in a fresh process; medians; ratios to bare.

    ``compare_lib``: a folder with another build of llama.cpp's libraries (say, one built with
    ``-march=native``); each round also runs bare llama-cpp-python on it (mode ``bare_alt``),
    and the ratios say how the installed build compares with it, round by round.
    """
    conf = _conf(quick)
    rounds: dict[str, list[dict[str, Any]]] = {"bare": [], "engine": [], "http": []}
    http_modes = ["http"]
    if LLAMA_SERVER.exists():
        rounds["llama_server"] = []
        http_modes.append("llama_server")
    else:
        console.print(f"[dim]bench runtime: no llama-server at {LLAMA_SERVER} (`make "
                      "llama-server` builds it): the gateway is measured without its anchor[/dim]")
    if compare_lib is not None:
        rounds["bare_alt"] = []
    for i in range(conf["rounds"]):
        for mode in ("bare", "engine"):
            console.print(f"[dim]bench runtime: round {i + 1}, {mode}…[/dim]")
            rounds[mode].append(_run_child(mode, quick))
        if compare_lib is not None:
            console.print(f"[dim]bench runtime: round {i + 1}, bare on {compare_lib}…[/dim]")
            rounds["bare_alt"].append(_run_child("bare", quick, compare_lib))
        long_tokens = rounds["bare"][0]["long_prompt_tokens"]
        for mode in http_modes[:: 1 if i % 2 == 0 else -1]:  # neither always comes first
            console.print(f"[dim]bench runtime: round {i + 1}, {mode}…[/dim]")
            rounds[mode].append(_http_round(mode, quick, long_tokens, settings))
    modes = {mode: _median_rounds(r) for mode, r in rounds.items()}
    ratios = _ratios(rounds)
    result = {
        "model": settings.local_model,
        "n_threads": settings.n_threads or os.cpu_count(),
        "quick": quick,
        "config": conf,
        "compare_lib": None if compare_lib is None else str(compare_lib),
        "modes": modes,
        "ratios": ratios,
        "checks": _checks(ratios),
        "rounds": rounds,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _print(result, console)
    return result


def _checks(ratios: dict[str, Any]) -> dict[str, Any]:
    """The gateway's decode target, with llama-server's figure of the same run beside it."""
    server = ratios.get("llama_server")
    value = ratios["http"]["decode_vs_bare"]
    return {
        "http_decode_vs_bare": {
            "target": DECODE_TARGET,
            "value": round(value, 4),
            "passed": value >= DECODE_TARGET,
            "llama_server_vs_bare": None if server is None else round(server["decode_vs_bare"], 4),
        }
    }


def _ratios(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each figure against bare of the same round, then the median over rounds.

    Pairing by round cancels slow drift in machine speed, which on a shared 2-core machine is
    larger than the differences being measured.
    """

    def paired(mode: str, key: str, compare: Callable[[float, float], float]) -> float:
        pairs = zip(rounds[mode], rounds["bare"], strict=True)
        return statistics.median(compare(m[key], b[key]) for m, b in pairs)

    ratios: dict[str, Any] = {}
    for mode in ("engine", "http", "llama_server"):
        if mode not in rounds:
            continue
        ratios[mode] = {
            "decode_vs_bare": paired(mode, "decode_tok_s", operator.truediv),
            "prefill_vs_bare": paired(mode, "prefill_tok_s", operator.truediv),
            "ttft_overhead_ms": paired(mode, "ttft_ms", operator.sub),
            "cold_start_vs_bare": paired(mode, "cold_start_s", operator.truediv),
            "peak_rss_vs_bare": paired(mode, "peak_rss_mib", operator.truediv),
        }
    if "llama_server" in rounds:  # the gateway against llama.cpp's own server, round by round
        pairs = list(zip(rounds["http"], rounds["llama_server"], strict=True))
        ratios["http_vs_llama_server"] = {
            "decode": statistics.median(h["decode_tok_s"] / s["decode_tok_s"] for h, s in pairs),
            "decode_per_round": [round(h["decode_tok_s"] / s["decode_tok_s"], 4) for h, s in pairs],
        }
    if "bare_alt" in rounds:  # the installed build against the other one
        pairs = list(zip(rounds["bare"], rounds["bare_alt"], strict=True))
        ratios["installed_vs_compare_lib"] = {
            "decode": statistics.median(b["decode_tok_s"] / a["decode_tok_s"] for b, a in pairs),
            "prefill": statistics.median(
                b["prefill_tok_s"] / a["prefill_tok_s"] for b, a in pairs
            ),
            "decode_per_round": [round(b["decode_tok_s"] / a["decode_tok_s"], 4) for b, a in pairs],
        }
    conversation = rounds["engine"][-1]["conversation"]
    ratios["conversation_prefill_over_new"] = conversation["prefill_over_new"]
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
    check = result["checks"]["http_decode_vs_bare"]
    verdict = "[green]PASS[/green]" if check["passed"] else "[red]FAIL[/red]"
    anchor = check["llama_server_vs_bare"]
    console.print(
        f"{verdict} one stream through the gateway decodes at {check['value']:.3f}x bare "
        f"(target {check['target']}x)"
        + ("" if anchor is None else f"; llama-server in the same rounds: {anchor:.3f}x")
    )


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2] == "quick")
