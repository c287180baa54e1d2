"""CLI commands for routing: ``route-eval``, ``train-router`` and ``calibrate``.

Registered on the main ``tandem`` app by ``tandem.cli``; each is a thin layer over
``tandem.routing``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tandem.errors import ConfigError

TaskOpt = Annotated[str, typer.Option(help="arc_easy, piqa, lambada or mmlu")]
DataOpt = Annotated[Path | None, typer.Option(
    help="Another file of the task's format (for MMLU: a CSV file or a folder of them)")]
DataDir = Annotated[Path | None, typer.Option(
    help="Folder with the evaluation data (default: $TANDEM_DATA_DIR or ../shared/data next "
         "to the source checkout)")]
LocalOpt = Annotated[str, typer.Option(help="Local model: bundled name or GGUF path")]
CloudOpt = Annotated[str | None, typer.Option(
    help="The 'cloud' model, run here on the same items: bundled name or GGUF path (default: "
         "the stand-in's qwen2.5-coder-1.5b for the chat protocol, gemma3-270m for loglik, "
         "as in docs/routing.md)")]
CHAT_CLOUD, LOGLIK_CLOUD = "qwen2.5-coder-1.5b", "gemma3-270m"
LimitOpt = Annotated[int | None, typer.Option(help="Only the first N items")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the JSON result")]
Threads = Annotated[int | None, typer.Option(help="CPU threads (default: all cores)")]
ProtocolOpt = Annotated[str, typer.Option(
    help="loglik (choices scored by log-likelihood) or chat (both tiers generate an answer "
         "to the chat message; tasks arc_easy, piqa, arith, code, writing)")]
SplitOpt = Annotated[str, typer.Option(
    help="Chat protocol: the tune or report half of the items, or all")]
KOpt = Annotated[int, typer.Option(
    "--cascade-tokens", help="Chat protocol: the cascade's check after this many tokens")]
CloudUrl = Annotated[str | None, typer.Option(
    help="Chat protocol: an OpenAI-compatible cloud instead of the stand-in")]


def load_rows(task: str, data: Path | None, data_dir: Path | None, limit: int | None,
              local: str, cloud: str, threads: int | None, console: Console) -> Any:
    """A task's items with both tiers' per-item results (measured now unless cached)."""
    from tandem.clikit import model_file, progress_bar
    from tandem.datadirs import default_data_dir
    from tandem.routing.evaluate import build_rows
    from tandem.routing.tasks import TASK_FILES, default_cache_dir, load_task, run_items

    if task not in TASK_FILES:
        raise ConfigError(f"Unknown task {task!r}; choose from {', '.join(TASK_FILES)}.",
                          param="task")
    path = data or (data_dir or default_data_dir()) / TASK_FILES[task]
    items = load_task(task, path, limit)
    if task == "mmlu":
        return build_rows(task, items)
    cache = default_cache_dir()
    with progress_bar(console) as progress:
        local_recs = run_items(model_file(local), task, items, cache, threads, progress)
        cloud_recs = run_items(model_file(cloud), task, items, cache, threads, progress)
    return build_rows(task, items, local_recs, cloud_recs)


def load_chat_rows(task: str, data_dir: Path | None, limit: int | None, local: str,
                   cloud: str, cloud_url: str | None, part: str, k: int, console: Console
                   ) -> Any:
    """A task's chat-protocol rows: both tiers' generated answers, graded."""
    from tandem.clikit import progress_bar
    from tandem.datadirs import default_data_dir
    from tandem.routing.chat_protocol import chat_rows, collect, task_items
    from tandem.routing.tasks import default_cache_dir

    items = task_items(task, data_dir or default_data_dir(), limit, part)
    with progress_bar(console) as progress:
        lo, cl = collect(task, items, local, cloud, cloud_url, default_cache_dir(), progress)
    return chat_rows(task, items, lo, cl, k)


def _table(result: dict[str, Any]) -> Table:
    table = Table(title=f"{result['task']}: {result['n_items']} items · local "
                        f"{result['local_accuracy']:.1%}, cloud {result['cloud_accuracy']:.1%}, "
                        f"oracle {result['oracle_accuracy']:.1%}")
    for col in ("router", "APGR", "CPT(50%)", "CPT(80%)", "AUROC", "acc @30% cloud"):
        table.add_column(col, justify="left" if col == "router" else "right")
    for name, r in result["routers"].items():
        apgr = f"{r['apgr']:.3f}" + (f" ± {r['apgr_std']:.3f}" if "apgr_std" in r else "")
        auroc = r.get("auroc_local_fails")
        table.add_row(name, apgr, f"{r['cpt50']:.1%}", f"{r['cpt80']:.1%}",
                      "-" if auroc is None else f"{auroc:.3f}",
                      "-" if "quality_at_30pct" not in r else f"{r['quality_at_30pct']:.1%}")
    return table


def register(app: typer.Typer, console: Console,
             clear_errors: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
    """Add the routing commands to ``app``.

    Long by nature: a table of commands, one nested function each (typer reads their
    signatures as the options).
    """

    @app.command("route-eval")
    def route_eval(
        task: TaskOpt,
        data: DataOpt = None,
        data_dir: DataDir = None,
        limit: LimitOpt = None,
        router: Annotated[list[str] | None, typer.Option(
            help="Router to score (repeatable; default: all for the task)")] = None,
        local: LocalOpt = "smollm2",
        cloud: CloudOpt = None,
        folds: Annotated[int, typer.Option(help="Cross-fitting folds for learned routers")] = 5,
        plot: Annotated[Path | None, typer.Option(help="Write the curves as a PNG")] = None,
        out: Annotated[Path | None, typer.Option(help="Write the JSON result here")] = None,
        threads: Threads = None,
        protocol: ProtocolOpt = "loglik",
        split: SplitOpt = "report",
        cascade_tokens: KOpt = 16,
        cloud_url: CloudUrl = None,
        routing_config: Annotated[Path | None, typer.Option(
            help="Chat protocol: also score this routing config's routers as trained "
                 "(shipped-prompt, shipped-cascade; 'shipped' for the shipped config)")] = None,
        as_json: AsJson = False,
    ) -> None:
        """Score routers on a labeled task: APGR, CPT(50%), CPT(80%), AUROC, vs random/oracle."""
        from tandem.routing.evaluate import evaluate_routers, plot_curves

        with clear_errors():
            if folds < 2:
                raise ConfigError("--folds must be at least 2.", param="folds")
            # With --json, stdout carries the JSON alone: progress goes to stderr.
            shown = Console(stderr=True) if as_json else console
            cloud = cloud or (CHAT_CLOUD if protocol == "chat" else LOGLIK_CLOUD)
            if protocol == "chat":
                rows = load_chat_rows(task, data_dir, limit, local, cloud, cloud_url, split,
                                      cascade_tokens, shown)
            elif protocol == "loglik":
                rows = load_rows(task, data, data_dir, limit, local, cloud, threads, shown)
            else:
                raise ConfigError(f"--protocol is loglik or chat, not {protocol!r}.",
                                  param="protocol")
            fixed = {}
            if routing_config is not None:
                from tandem.routing.policy import RoutingConfig

                cfg = RoutingConfig.load(None if str(routing_config) == "shipped"
                                         else routing_config)
                if cfg.prompt is not None:
                    fixed["shipped-prompt"] = cfg.prompt.router
                if cfg.cascade is not None and protocol == "chat":
                    fixed["shipped-cascade"] = cfg.cascade.router
            result = evaluate_routers(rows, router, folds, fixed=fixed)
            result["models"] = ({"weak": "as labeled", "strong": "as labeled"} if task == "mmlu"
                                else {"local": local, "cloud": cloud_url or cloud})
            result["protocol"] = protocol
            if protocol == "chat":
                result["split"] = split
                result["cascade_tokens"] = cascade_tokens
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=1))
            if plot is not None:
                plot_curves(result, plot)
        if as_json:
            typer.echo(json.dumps(result, indent=1))
        else:
            console.print(_table(result))
            if plot is not None:
                console.print(f"curves: {plot}")

    @app.command("train-router")
    def train_router_cmd(
        out: Annotated[Path, typer.Argument(help="Router file to write (JSON)")],
        task: Annotated[list[str], typer.Option(help="Task to train on (repeatable)")],
        router: Annotated[str, typer.Option(help="prompt or cascade")] = "prompt",
        features: Annotated[str | None, typer.Option(
            help="Comma-separated subset of the router's features (default: all). The "
                 "shipped cascade router keeps the log-probability statistics and 'copied': "
                 "the other word features describe one-word answers, not chat")] = None,
        data_dir: DataDir = None,
        limit: LimitOpt = None,
        local: LocalOpt = "smollm2",
        cloud: CloudOpt = None,
        threads: Threads = None,
        protocol: ProtocolOpt = "chat",
        split: SplitOpt = "tune",
        cascade_tokens: KOpt = 16,
        cloud_url: CloudUrl = None,
    ) -> None:
        """Train a router on every item of the given tasks and save it for the gateway."""
        from tandem.routing.evaluate import train_router

        with clear_errors():
            cloud = cloud or (CHAT_CLOUD if protocol == "chat" else LOGLIK_CLOUD)
            if protocol == "chat":
                rows = [load_chat_rows(t, data_dir, limit, local, cloud, cloud_url, split,
                                       cascade_tokens, console) for t in task]
            else:
                rows = [load_rows(t, None, data_dir, limit, local, cloud, threads, console)
                        for t in task]
            subset = None if features is None else [
                f.strip() for f in features.split(",") if f.strip()]
            model = train_router(router, rows, subset)
            model.meta["protocol"] = protocol
            if protocol == "chat":
                model.meta.update(split=split, cascade_tokens=cascade_tokens,
                                  cloud=cloud_url or cloud, local=local)
            model.save(out)
        n = model.meta["n_items"]
        console.print(f"{router} router: {len(model.features)} features, trained on {n} items "
                      f"({', '.join(task)}) → {out}")

    @app.command()
    def calibrate(
        target_cloud_rate: Annotated[float, typer.Option(
            help="Fraction of requests the cloud should take, e.g. 0.3")],
        prompts: Annotated[Path | None, typer.Option(
            help="Prompt set: JSON lines with 'prompt', 'query', 'context' or 'turns' fields, "
                 "or plain text, one prompt per line (default: MT-Bench's first turns)")] = None,
        config: Annotated[Path | None, typer.Option(
            help="Routing config to start from (default: the shipped one)")] = None,
        prompt_router: Annotated[Path | None, typer.Option(
            help="Use this prompt router (from train-router) instead of the config's")] = None,
        cascade_router: Annotated[Path | None, typer.Option(
            help="Use this cascade router (from train-router) instead of the config's")] = None,
        mode: Annotated[str | None, typer.Option(
            help="combined, cascade, prompt or local_first (default: the config's)")] = None,
        prompt_share: Annotated[float, typer.Option(
            help="In combined mode, the share of the cloud calls the prompt router makes "
                 "before generation (the cascade makes the rest)")] = 0.5,
        model: Annotated[str, typer.Option(help="Local model for the cascade's confidence")]
        = "smollm2",
        cascade_tokens: Annotated[int | None, typer.Option(
            "--cascade-tokens", help="The cascade's check after this many tokens (default: "
            "the K the cascade router was trained at, else the config's)")] = None,
        data_dir: DataDir = None,
        out: Annotated[Path, typer.Option(help="Routing config to write")] = Path(
            "routing.json"),
        as_json: AsJson = False,
    ) -> None:
        """Set the routers' thresholds so that a prompt set sends the target share to the cloud.

        Serve with the result: ``TANDEM_ROUTING_CONFIG=routing.json tandem serve``.
        """
        from tandem.routing.calibrate import calibrate as run
        from tandem.routing.calibrate import read_prompts, with_routers

        with clear_errors():
            base = with_routers(config, prompt_router, cascade_router)
            trained_k = None if base.cascade is None else base.cascade.router.meta.get(
                "cascade_tokens")
            k = cascade_tokens or trained_k or base.cascade_tokens
            base = replace(base, cascade_tokens=int(k))
            texts = read_prompts(prompts, data_dir)
            shown = Console(stderr=True) if as_json else console
            result = run(base, texts, target_cloud_rate, mode, prompt_share, model, shown)
            result.config.save(out)
        summary = result.summary()
        if as_json:
            typer.echo(json.dumps(summary, indent=1))
        else:
            console.print_json(json.dumps(summary))
            console.print(f"wrote {out}; serve with TANDEM_ROUTING_CONFIG={out}")
