"""The ``tandem`` command line: thin typer commands over the library."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from tandem.clikit import clear_errors, console
from tandem.settings import KvType, Settings, default_sessions_db, load_settings

app = typer.Typer(help="Tandem: an on-device LLM gateway with a cloud tier.", no_args_is_help=True)
privacy_app = typer.Typer(help="Check what the privacy policy finds and redacts.")
app.add_typer(privacy_app, name="privacy")

CloudUrl = Annotated[
    str | None, typer.Option(help="OpenAI-compatible cloud base URL (default: stand-in cloud)")
]
Model = Annotated[str | None, typer.Option("--model", help="Bundled model name or GGUF path")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the JSON result")]


@contextlib.contextmanager
def _cloud_tier(settings: Settings) -> Iterator[Settings]:
    """Settings with a cloud URL: the configured one, or a stand-in cloud started here."""
    if settings.cloud_url or not settings.standin:
        yield settings
        return
    from tandem.cloud.standin import standin_from_settings

    standin = standin_from_settings(settings)
    console.print(f"[dim]Starting the stand-in cloud ({standin.model})…[/dim]")
    with standin:
        yield settings.model_copy(update=standin.gateway_settings())


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
    with clear_errors(), _cloud_tier(base) as settings:
        app_ = create_app(settings)
        _print_banner(settings)
        uvicorn.run(app_, host=settings.host, port=settings.port, log_config=_log_config())


def _log_config() -> dict[str, object]:
    """uvicorn's logging, with the gateway's own loggers on its handler and format: without a
    handler of their own, their warnings (the cloud going down) depended on Python's
    last-resort handler, which any library that configures the root logger silences."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["tandem"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


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
    with clear_errors(), _cloud_tier(base) as settings:
        asyncio.run(run_repl(settings, route, console, session))


@app.command("standin-cloud")
def standin_cloud(
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1")] = None,
    engine: Annotated[
        str | None,
        typer.Option(help="llama_cpp (llama_cpp.server) or vllm (a vLLM server: `make vllm`)"),
    ] = None,
) -> None:
    """Run the stand-in cloud (llama_cpp.server, or vLLM) on loopback until Ctrl-C."""
    from tandem.cloud.standin import standin_from_settings

    settings = load_settings(standin_port=port, standin_engine=engine)
    standin = standin_from_settings(settings)
    console.print(f"Stand-in cloud ({standin.kind}, {standin.model}) starting on "
                  f"127.0.0.1:{settings.standin_port} …")
    if settings.standin_engine == "vllm" and settings.cloud_api_key is None:
        # The server always wants a key; one made up here is shown once, for the gateway.
        key = standin.gateway_settings()["cloud_api_key"].get_secret_value()
        console.print(
            "It takes the API key made up for this run; point a gateway at it with\n"
            f"  TANDEM_CLOUD_API_KEY={key} TANDEM_CLOUD_N_CTX={settings.standin_n_ctx} "
            f"tandem serve --cloud-url http://127.0.0.1:{settings.standin_port}/v1"
        )
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
    with clear_errors():
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

    with clear_errors():
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


def _register_optimization_commands() -> None:
    from tandem.optimize.commands import register, register_model_surgery
    from tandem.routing.commands import register as register_routing

    register(app, console, clear_errors)
    register_model_surgery(app, console, clear_errors)
    register_routing(app, console, clear_errors)
    try:  # the benchmarks ship with a source checkout, not with the package
        from bench.cli import register as register_benchmarks
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", "bench.cli"):
            raise  # a benchmark's own dependency is missing: say so, do not hide `tandem bench`
        return
    register_benchmarks(app)


_register_optimization_commands()
