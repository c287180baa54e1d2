"""``tandem bench ...``: the benchmarks, each writing JSON and comparing against a baseline
measured in the same run. Added to the CLI when this package is importable (a source
checkout); the installed product does not carry it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from tandem.clikit import clear_errors, console
from tandem.settings import load_settings

BenchOut = Annotated[
    Path | None, typer.Option(help="Where to write the JSON (default: bench/results/NAME.json)")
]


RoutingConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="Routing config (default: the shipped one)")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the JSON result")]
CloudEngine = Annotated[str | None, typer.Option(
    help="The stand-in cloud's server: llama_cpp (llama_cpp.server) or vllm (`make vllm`)")]
DataDirOpt = Annotated[Path | None, typer.Option(
    help="Evaluation data folder (default: $TANDEM_DATA_DIR or ../shared/data)")]


def _results(name: str) -> Path:
    return Path("bench/results") / f"{name}.json"


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))


bench_app = typer.Typer(help="Benchmarks (JSON results, baseline measured in the same run).")


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command group to ``app``."""
    app.add_typer(bench_app, name="bench")


@bench_app.command("privacy")
def bench_privacy(
    quick: Annotated[bool, typer.Option(help="Fewer latency runs")] = False,
    as_json: AsJson = False,
    corpus: Annotated[
        Path | None, typer.Option(help="Another corpus in the same JSONL format")
    ] = None,
    out: BenchOut = None,
) -> None:
    """Detection recall/precision per category, false redactions, and latency per request."""
    from bench.privacy import CORPUS, run_privacy_bench

    result = run_privacy_bench(
        load_settings(),
        quick=quick,
        out=out or _results("privacy"),
        console=console,
        corpus=corpus or CORPUS,
    )
    _emit(result, as_json)


@bench_app.command("standin")
def bench_standin(
    quick: Annotated[bool, typer.Option(help="A third of the items")] = False,
    data_dir: DataDirOpt = None,
    as_json: AsJson = False,
    out: BenchOut = None,
) -> None:
    """The stand-in cloud against the local model on chat-shaped questions (report half)."""
    from rich.table import Table

    from bench.standin import run_standin_bench
    from tandem.datadirs import default_data_dir

    with clear_errors():
        result = run_standin_bench(data_dir or default_data_dir(), quick,
                                   out or _results("standin"), console)
    if as_json:
        _emit(result, as_json)
        return
    table = Table(title=f"stand-in {result['standin']} vs local {result['local']} (chat protocol,"
                        " report half)")
    for col in ("task", "items", "local", "stand-in", "gain (pts, 95%)", "median s local/stand-in"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, r in result["tasks"].items():
        table.add_row(task, str(r["n_items"]), f"{r['local_accuracy']:.1%}",
                      f"{r['standin_accuracy']:.1%}",
                      f"{r['gain_points']:+.1f} ± {r['gain_ci95_points']:.1f}",
                      f"{r['local_latency']['median_s']:.2f} / "
                      f"{r['standin_latency']['median_s']:.2f}")
    o = result["overall"]
    table.add_row("overall", str(o["n_items"]), "", "",
                  f"{o['gain_points']:+.1f} ± {o['gain_ci95_points']:.1f}", "")
    console.print(table)
    for g in result["greetings"]:
        console.print(f"[bold]{g['prompt']}[/bold] → {g['answer'][:120]!r}")


def _routing_bench(run: Callable[..., dict[str, Any]], name: str, config: Path | None,
                   data_dir: Path | None, out: Path | None, as_json: bool
                   ) -> dict[str, Any] | None:
    """Run a bench of a routing config over the evaluation data; None once printed as JSON."""
    from tandem.datadirs import default_data_dir

    with clear_errors():
        result = run(data_dir or default_data_dir(), config, out or _results(name), console)
    if as_json:
        _emit(result, as_json)
        return None
    return result


@bench_app.command("routing-sanity")
def bench_routing_sanity(
    config: RoutingConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: AsJson = False,
    out: BenchOut = None,
) -> None:
    """Which everyday prompts the routing policy escalates: small talk, task categories."""
    from bench.routing_sanity import run_routing_sanity

    result = _routing_bench(run_routing_sanity, "routing_sanity", config, data_dir, out, as_json)
    if result is None:
        return
    for group, r in result["groups"].items():
        console.print(f"{group:24s} n={r['n']:3d} escalated {r['escalated']:.0%}  abstained: "
                      f"prompt {r['prompt_abstained']:.0%}, cascade {r['cascade_abstained']:.0%}")
    for key in ("task", "mt_bench"):
        if key in result:
            console.print(f"{key}: {result[key]}")
    console.print(f"small talk local: {result.get('small_talk_local')}")


@bench_app.command("hedge")
def bench_hedge(
    config: RoutingConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: AsJson = False,
    out: BenchOut = None,
) -> None:
    """The hedged cascade: early cloud calls started, wasted and used, and time saved."""
    from bench.hedge import run_hedge_bench

    result = _routing_bench(run_hedge_bench, "hedge", config, data_dir, out, as_json)
    if result is None:
        return
    console.print(f"K = {result['cascade_tokens']}, hedge after {result['hedge_at']} tokens, "
                  f"{result['n_requests']} requests, {result['escalated']:.1%} escalated")
    for b in result["bands"]:
        console.print(f"band {b['band']:<5} started {b['started']:.1%}  wasted {b['wasted']:.1%}"
                      f"  used {b['used_of_escalations']}  saved {b['saved_ms_median']} ms")


@bench_app.command("router")
def bench_router(
    quick: Annotated[bool, typer.Option(help="Fewer timed decisions")] = False,
    as_json: AsJson = False,
    out: BenchOut = None,
) -> None:
    """Routing decision latency on a 500-token prompt, and the cascade's cost per token."""
    from bench.router import run_router_bench

    result = run_router_bench(load_settings(), quick, out or _results("router"), console)
    _emit(result, as_json)


@bench_app.command("structured")
def bench_structured(
    quick: Annotated[bool, typer.Option(help="One pass over the prompts")] = False,
    as_json: AsJson = False,
    out: BenchOut = None,
) -> None:
    """Constrained decoding (llguidance, GBNF) against unconstrained, and schema compile time."""
    import os

    from bench.structured import run_structured_bench
    from tandem.catalog import resolve_model

    settings = load_settings()
    with clear_errors():
        path, chat_format = resolve_model(settings.local_model)
        result = run_structured_bench(path, chat_format or settings.local_chat_format,
                                      settings.n_threads or os.cpu_count() or 1, quick,
                                      out or _results("structured"), console)
    _emit(result, as_json)


@bench_app.command("infill")
def bench_infill(
    quick: Annotated[bool, typer.Option(help="A shorter typing session")] = False,
    model: Annotated[str | None, typer.Option(help="Bundled model name or GGUF path")] = None,
    fim: Annotated[
        bool, typer.Option(help="Replay through /infill with a suffix (the model needs FIM tokens)")
    ] = False,
    as_json: AsJson = False,
    out: BenchOut = None,
) -> None:
    """Keystroke latency: a typing session on a 1,500-token prefix against a cold prefill."""
    from bench.infill import run_infill_bench
    from tandem.catalog import resolve_model

    settings = load_settings(local_model=model)
    with clear_errors():
        path, _ = resolve_model(settings.local_model)
        result = run_infill_bench(
            settings.model_copy(update={"local_model": str(path)}),
            path,
            fim,
            quick,
            out or _results("infill"),
            console,
        )
    _emit(result, as_json)


@bench_app.command("extraction")
def bench_extraction(
    items: Annotated[int, typer.Option(help="Sentences to extract from")] = 60,
    as_json: AsJson = False,
    out: BenchOut = None,
) -> None:
    """Form extraction under a JSON schema: local, cloud and auto, accuracy and escalations."""
    from bench.extraction import run_extraction_bench

    with clear_errors():
        result = run_extraction_bench(load_settings(), items, out or _results("extraction"),
                                      console)
    _emit(result, as_json)


@bench_app.command("faults")
def bench_faults(
    quick: Annotated[bool, typer.Option(help="6 requests per fault instead of 30")] = False,
    cloud_engine: CloudEngine = None,
    as_json: AsJson = False,
    out: BenchOut = None,
) -> None:
    """The fault matrix between the gateway and the stand-in cloud, with numbers."""
    from bench.faults import run_faults_bench

    result = run_faults_bench(
        load_settings(standin_engine=cloud_engine), quick=quick,
        out=out or _results("faults" if cloud_engine != "vllm" else "faults_vllm"),
        console=console,
    )
    _emit(result, as_json)


@bench_app.command("parallel")
def bench_parallel(
    quick: Annotated[bool, typer.Option(help="S = 1, 4 and 1, 4 streams, one model")] = False,
    variant: Annotated[str | None, typer.Option(
        help="A second quantization of the model to measure too (none: --variant '')")] = "Q4_0",
    as_json: AsJson = False,
    out: BenchOut = None,
) -> None:
    """Continuous batching: slots × streams in the engine, and llama.cpp's server beside it."""
    from bench.parallel import run_parallel_bench
    from tandem.catalog import resolve_model

    settings = load_settings()
    with clear_errors():
        path, _ = resolve_model(settings.local_model)
        result = run_parallel_bench(settings, path, quick, out or _results("parallel"), console,
                                    variant=(variant or None) if not quick else None)
    _emit(result, as_json)


@bench_app.command("load")
def bench_load(
    quick: Annotated[bool, typer.Option(help="Levels 1, 4, 16 for 15 s each, no soak")] = False,
    soak_s: Annotated[
        float | None, typer.Option(help="Soak duration in seconds (default: 600, none if quick)")
    ] = None,
    as_json: AsJson = False,
    out: BenchOut = None,
    event_loop_only: Annotated[
        bool, typer.Option(help="Only the event-loop scenario (loop lag, /healthz latency)")
    ] = False,
) -> None:
    """Concurrent clients through `tandem serve`: throughput, latency, rejections, memory."""
    from bench.load import run_load_bench

    result = run_load_bench(
        load_settings(), quick=quick, out=out or _results("load"), console=console, soak_s=soak_s,
        event_loop_only=event_loop_only,
    )
    _emit(result, as_json)


@bench_app.command("handoff")
def bench_handoff(
    quick: Annotated[bool, typer.Option(help="One short conversation, fewer sessions")] = False,
    cloud_engine: CloudEngine = None,
    as_json: AsJson = False,
    out: BenchOut = None,
) -> None:
    """Sessions across tiers: local prefill vs a naive gateway, the cloud's prefix cache, and
    session-switch cost."""
    from bench.handoff import run_handoff_bench

    result = run_handoff_bench(
        load_settings(standin_engine=cloud_engine), quick=quick,
        out=out or _results("handoff" if cloud_engine != "vllm" else "handoff_vllm"),
        console=console,
    )
    _emit(result, as_json)


@bench_app.command("frontier")
def bench_frontier(
    quick: Annotated[bool, typer.Option(help="5 variants, 4 chunks, 100 ARC items")] = False,
    chunks: Annotated[int | None, typer.Option(help="Perplexity/KLD chunks (default 40)")]
    = None,
    limit: Annotated[int | None, typer.Option(help="ARC-Easy items (default: all)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Evaluation data folder")] = None,
    as_json: AsJson = False,
    out: BenchOut = None,
) -> None:
    """SmolLM2's quality–memory frontier: reference, imatrix, variants, evaluation, plot."""
    from bench.frontier import run_frontier_bench

    with clear_errors():
        result = run_frontier_bench(quick=quick, out=out or _results("frontier"), console=console,
                                    data_dir=data_dir, chunks=chunks, items=limit)
    _emit(result, as_json)


@bench_app.command("runtime")
def bench_runtime(
    quick: Annotated[bool, typer.Option(help="Fewer tokens and repeats")] = False,
    as_json: AsJson = False,
    out: BenchOut = None,
    compare_lib: Annotated[
        Path | None,
        typer.Option(help="Also run bare llama-cpp-python on the llama.cpp libraries in this "
                     "folder (e.g. a -march=native build) and report the paired ratio"),
    ] = None,
) -> None:
    """Bare llama-cpp-python vs LocalEngine vs the HTTP gateway, in one run."""
    from bench.runtime import run_runtime_bench

    result = run_runtime_bench(
        load_settings(), quick=quick, out=out or _results("runtime"), console=console,
        compare_lib=compare_lib,
    )
    _emit(result, as_json)
