"""The ``tandem`` command line: thin typer commands over the library."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tandem.settings import KvType, Settings, default_sessions_db, load_settings

app = typer.Typer(help="Tandem: an on-device LLM gateway with a cloud tier.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (JSON results, baseline measured in the same run).")
app.add_typer(bench_app, name="bench")
privacy_app = typer.Typer(help="Check what the privacy policy finds and redacts.")
app.add_typer(privacy_app, name="privacy")
console = Console()

CloudUrl = Annotated[
    str | None, typer.Option(help="OpenAI-compatible cloud base URL (default: stand-in cloud)")
]
Model = Annotated[str | None, typer.Option("--model", help="Bundled model name or GGUF path")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the JSON result")]
BenchOut = Annotated[
    Path | None, typer.Option(help="Where to write the JSON (default: bench/results/NAME.json)")
]


RoutingConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="Routing config (default: the shipped one)")]
DataDirOpt = Annotated[Path | None, typer.Option(
    help="Evaluation data folder (default: $TANDEM_DATA_DIR or ../shared/data)")]


def _results(name: str) -> Path:
    return Path("bench/results") / f"{name}.json"


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))


@contextlib.contextmanager
def _cloud_tier(settings: Settings) -> Iterator[Settings]:
    """Settings with a cloud URL: the configured one, or a stand-in cloud started here."""
    if settings.cloud_url or not settings.standin:
        yield settings
        return
    from tandem.cloud.standin import StandinCloud

    console.print(f"[dim]Starting the stand-in cloud ({settings.standin_model})…[/dim]")
    with StandinCloud.from_settings(settings) as standin:
        yield settings.model_copy(update={"cloud_url": standin.base_url})


@contextlib.contextmanager
def _clear_errors() -> Iterator[None]:
    """Report Tandem's own errors (bad settings, unusable files) as one line, not a traceback."""
    from tandem.errors import TandemError

    try:
        yield
    except TandemError as exc:
        console.print(f"[red]error:[/red] {exc.message}", soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="Port")] = None,
    cloud_url: CloudUrl = None,
    model: Model = None,
    n_ctx: Annotated[int | None, typer.Option(help="Local context window")] = None,
    standin: Annotated[
        bool | None, typer.Option("--standin/--no-standin", help="Start the stand-in cloud")
    ] = None,
) -> None:
    """Run the OpenAI-compatible gateway."""
    import uvicorn

    from tandem.server import create_app

    base = load_settings(
        host=host,
        port=port,
        cloud_url=cloud_url,
        local_model=model,
        n_ctx=n_ctx,
        standin=standin,
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown; make that an exit that runs the
    # cleanup below (stopping the stand-in cloud) instead of the default instant death.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with _clear_errors(), _cloud_tier(base) as settings:
        app_ = create_app(settings)
        _print_banner(settings)
        uvicorn.run(app_, host=settings.host, port=settings.port, log_level="info")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _print_banner(s: Settings) -> None:
    url = f"http://{s.host}:{s.port}/v1"
    cloud = s.cloud_url or "none (local only)"
    console.print(
        f"[bold]Tandem gateway[/bold] on {url}  local: {s.local_model}  cloud: {cloud}",
        soft_wrap=True,
    )
    console.print(
        "Talk to it with any OpenAI client, e.g.\n"
        f"  curl {url}/chat/completions -H 'Content-Type: application/json' \\\n"
        '    -d \'{"messages": [{"role": "user", "content": "Hello!"}]}\'\n'
        f"  python -c \"from openai import OpenAI; c = OpenAI(base_url='{url}', api_key='x'); "
        "print(c.chat.completions.create(model='auto', messages=[{'role': 'user', "
        "'content': 'Hi'}]).choices[0].message.content)\"\n"
        'Force a tier with the body field {"tandem": {"route": "local"|"cloud"}}; '
        "every answer says where it came from (X-Tandem-Route / X-Tandem-Reason). "
        f"Health: {url[:-3]}/healthz  Metrics: {url[:-3]}/metrics",
        soft_wrap=True,
    )
    if s.sessions:
        console.print(
            "Keep a conversation server-side with the header X-Session-Id: <id> (send only "
            f"the new messages); transcripts at {url}/sessions/<id>; stored in "
            f"{s.sessions_db or default_sessions_db()}",
            soft_wrap=True,
        )


@app.command()
def chat(
    route: Annotated[str, typer.Option(help="auto, local or cloud")] = "auto",
    cloud_url: CloudUrl = None,
    model: Model = None,
    max_tokens: Annotated[int | None, typer.Option(help="Tokens per answer")] = None,
    session: Annotated[
        str | None, typer.Option(help="Resume this session (default: start a new one)")
    ] = None,
) -> None:
    """Chat in the terminal through the gateway; each turn shows its route and reason."""
    from tandem.chat_repl import run_repl

    base = load_settings(cloud_url=cloud_url, local_model=model, default_max_tokens=max_tokens)
    with _clear_errors(), _cloud_tier(base) as settings:
        asyncio.run(run_repl(settings, route, console, session))


@app.command("standin-cloud")
def standin_cloud(
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1")] = None,
) -> None:
    """Run the stand-in cloud (llama_cpp.server with the bundled Gemma model) until Ctrl-C."""
    from tandem.cloud.standin import StandinCloud

    settings = load_settings(standin_port=port)
    standin = StandinCloud.from_settings(settings)
    console.print(f"Stand-in cloud starting on 127.0.0.1:{settings.standin_port} …")
    standin.run_forever()


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable")] = False,
) -> None:
    """The bundled models: paths, sizes and memory plans at the configured context."""
    from tandem.catalog import BUNDLED, bundled_path
    from tandem.local.memory import plan_memory

    settings = load_settings()
    rows: list[dict[str, Any]] = []
    for model in BUNDLED.values():
        path = bundled_path(model.name)
        plan = plan_memory(path, settings.n_ctx, settings.kv_type, settings.n_batch)
        rows.append(
            {
                "name": model.name,
                "role": model.role,
                "description": model.description,
                "path": str(path),
                "size_bytes": path.stat().st_size,
                "plan": plan.to_dict(),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        mib = row["plan"]["total_bytes"] / 2**20
        console.print(
            f"[bold]{row['name']}[/bold] ({row['role']}): {row['description']}\n"
            f"  {row['path']}\n  {row['size_bytes'] / 2**20:.1f} MiB on disk; "
            f"{mib:.1f} MiB planned at n_ctx={settings.n_ctx} ({settings.kv_type} KV)"
        )


@app.command()
def plan(
    model: Annotated[str, typer.Argument(help="Bundled model name or GGUF path")],
    ram: Annotated[str | None, typer.Option(help="RAM budget, e.g. 512MiB")] = None,
    n_ctx: Annotated[int | None, typer.Option(help="Context window")] = None,
    kv_type: Annotated[KvType | None, typer.Option(help="KV cache type")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable")] = False,
) -> None:
    """Memory plan of a model from its GGUF metadata, and the largest context that fits."""
    from tandem.catalog import resolve_model
    from tandem.local.memory import largest_context, parse_size, plan_memory

    settings = load_settings(n_ctx=n_ctx, kv_type=kv_type)
    path, _ = resolve_model(model)
    memory_plan = plan_memory(path, settings.n_ctx, settings.kv_type, settings.n_batch)
    result: dict[str, Any] = memory_plan.to_dict()
    if ram is not None:
        try:
            budget = parse_size(ram)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--ram") from exc
        result["budget_bytes"] = budget
        result["fits"] = memory_plan.fits(budget)
        result["largest_n_ctx"] = largest_context(path, budget, settings.kv_type, settings.n_batch)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    for key, value in result.items():
        shown = f"{value / 2**20:.1f} MiB" if key.endswith("_bytes") and value else value
        console.print(f"{key:>16}: {shown}")


@privacy_app.command("scan")
def privacy_scan(
    source: Annotated[
        str, typer.Argument(help="A file of lines (text or JSON with 'text'), or -")
    ] = "-",
) -> None:
    """Print, per input line, the findings, the redacted text and the decision as JSON."""
    import sys

    from tandem.errors import ConfigError
    from tandem.privacy.policy import PrivacyGuard, scan_line

    s = load_settings()
    with _clear_errors():
        guard = PrivacyGuard(s.privacy_categories, s.privacy_keep_local, s.privacy_threshold)
        with contextlib.ExitStack() as stack:
            lines = sys.stdin
            if source != "-":
                if not Path(source).is_file():
                    raise ConfigError(f"{source} is not a readable file; give a file or '-'.")
                lines = stack.enter_context(Path(source).open(encoding="utf-8"))
            for line in lines:
                if line.strip():
                    typer.echo(json.dumps(scan_line(guard, line), ensure_ascii=False))


@app.command()
def audit(
    session: Annotated[str | None, typer.Option(help="Only this session's cloud calls")] = None,
    limit: Annotated[int, typer.Option(help="Newest N records")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """The record of cloud calls: when, which session, what was redacted, a hash of the body."""
    from rich.table import Table

    from tandem.runtime import open_store

    with _clear_errors():
        store = open_store(load_settings())
        records = store.audit(session, limit)
        store.close()
    if as_json:
        for r in records:
            typer.echo(json.dumps(r))
        return
    table = Table(title=f"cloud calls (newest {limit})")
    for col in ("time", "session", "mode", "redacted", "sha256", "bytes", "outcome"):
        table.add_column(col)
    for r in records:
        redacted = ", ".join(f"{k} {v}" for k, v in sorted(r["redacted"].items())) or "-"
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["at"])),
            r["session_id"] or "-",
            r["mode"],
            redacted,
            r["body_sha256"][:12],
            str(r["body_bytes"]),
            r["outcome"],
        )
    console.print(table)


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
    from tandem.optimize.evaluate import default_data_dir

    with _clear_errors():
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
    from tandem.optimize.evaluate import default_data_dir

    with _clear_errors():
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


@bench_app.command("faults")
def bench_faults(
    quick: Annotated[bool, typer.Option(help="6 requests per fault instead of 30")] = False,
    as_json: AsJson = False,
    out: BenchOut = None,
) -> None:
    """The fault matrix between the gateway and the stand-in cloud, with numbers."""
    from bench.faults import run_faults_bench

    result = run_faults_bench(
        load_settings(), quick=quick, out=out or _results("faults"), console=console
    )
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
    as_json: AsJson = False,
    out: BenchOut = None,
) -> None:
    """Sessions across tiers: local prefill vs a naive gateway, and session-switch cost."""
    from bench.handoff import run_handoff_bench

    result = run_handoff_bench(
        load_settings(), quick=quick, out=out or _results("handoff"), console=console
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

    with _clear_errors():
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


def _register_optimization_commands() -> None:
    from tandem.optimize.commands import register, register_model_surgery
    from tandem.routing.commands import register as register_routing

    register(app, console, _clear_errors)
    register_model_surgery(app, console, _clear_errors)
    register_routing(app, console, _clear_errors)


_register_optimization_commands()
