"""CLI commands for model optimization: quantize, dequantize, imatrix, evaluate, frontier.

Registered on the main ``tandem`` app by ``tandem.cli``; each command is a thin layer over the
library modules next to this one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tandem.clikit import model_file, progress_bar
from tandem.errors import ConfigError

ModelArg = Annotated[str, typer.Argument(help="GGUF path or bundled model name (e.g. smollm2)")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the JSON result")]
Threads = Annotated[int | None, typer.Option(help="CPU threads (default: all cores)")]
DataDir = Annotated[
    Path | None,
    typer.Option(help="Folder with the evaluation data (default: $TANDEM_DATA_DIR or "
                      "../shared/data next to the source checkout)"),
]
Tasks = Annotated[
    str | None,
    typer.Option(help="Comma-separated: ppl, kld, arc_easy, piqa, perf (default: all; kld "
                      "only with --ref)"),
]
ALL = "ppl,kld,arc_easy,piqa,perf"
Chunks = Annotated[
    int | None, typer.Option(help="Perplexity/KLD chunks of --ctx tokens (default: all; "
                                  "with --limit: limit/10, at least 2)")
]
Limit = Annotated[int | None, typer.Option(help="At most N multiple-choice items per task "
                                                "(quick runs)")]
REFERENCE_NOTE = (
    "KL divergence is measured against the reference given with --ref. For the bundled "
    "SmolLM2 that is the shipped Q4_1 model dequantized to F32 (`tandem dequantize smollm2 "
    "ref.gguf`), not the original bf16 weights."
)


def _options(data_dir: Path | None, tasks: str, chunks: int | None, limit: int | None,
             ctx: int, perf_ctx: int, threads: int | None, no_cache: bool) -> Any:
    from tandem.datadirs import default_data_dir
    from tandem.optimize.evaluate import EvalOptions

    if chunks is None and limit is not None:
        chunks = max(2, limit // 10)
    return EvalOptions(
        data_dir=data_dir or default_data_dir(),
        tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()),
        n_ctx=ctx, chunks=chunks, items=limit, perf_ctx=perf_ctx, n_threads=threads,
        use_cache=not no_cache,
    )


def _results_table(results: list[dict[str, Any]]) -> Table:
    table = Table(title="evaluation", caption=REFERENCE_NOTE)
    for col in ("model", "MB", "bpw", "PPL", "KLD mean", "KLD p99", "same top", "ARC-E",
                "PIQA", "prefill t/s", "decode t/s", "peak RSS MB"):
        table.add_column(col, justify="left" if col == "model" else "right")

    def f(value: Any, spec: str, scale: float = 1.0) -> str:
        return "-" if value is None else format(value * scale, spec)

    for r in results:
        kld = r.get("kld") or {}
        tasks = r.get("tasks") or {}
        speed = r.get("speed") or {}
        table.add_row(
            r["model"]["name"] + (" (ref)" if r.get("is_reference") else ""),
            f(r["model"]["size_bytes"], ".2f", 1e-6),
            f(r["model"]["bits_per_weight"], ".2f"),
            f((r.get("perplexity") or {}).get("ppl"), ".3f"),
            f(kld.get("mean"), ".4f"), f(kld.get("p99"), ".3f"),
            f(kld.get("same_top"), ".1%"),
            f((tasks.get("arc_easy") or {}).get("acc"), ".1%"),
            f((tasks.get("piqa") or {}).get("acc"), ".1%"),
            f(speed.get("prefill_tps"), ".0f"), f(speed.get("decode_tps"), ".0f"),
            f((r.get("memory") or {}).get("peak_rss_mb"), ".0f"),
        )
    return table


def register(app: typer.Typer, console: Console,
             clear_errors: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
    """Add the optimization commands to ``app``.

    Long by nature: a table of commands, one nested function each (typer reads their
    signatures as the options).
    """

    @app.command()
    def quantize(
        src: ModelArg,
        out: Annotated[Path | None, typer.Argument(help="Output GGUF (omit with --dry-run)")]
        = None,
        qtype: Annotated[str, typer.Option("--type", help="Q8_0, Q6_K, Q5_K_M, Q5_0, Q4_K_M, "
                                           "Q4_0, Q3_K_M, Q2_K, IQ4_NL, … (see --list-types)")]
        = "Q4_K_M",
        embd_type: Annotated[str | None, typer.Option(help="Token-embedding tensor type")]
        = None,
        output_type: Annotated[str | None, typer.Option(help="Output tensor type")] = None,
        tensor_type: Annotated[list[str] | None, typer.Option(
            help="PATTERN=TYPE: tensors whose name matches the regex get TYPE (repeatable)")]
        = None,
        imatrix: Annotated[Path | None, typer.Option(help="Importance matrix (tandem imatrix)")]
        = None,
        dry_run: Annotated[bool, typer.Option(help="Print the per-tensor plan; write nothing")]
        = False,
        pure: Annotated[bool, typer.Option(help="Every tensor in --type (no mixture rules)")]
        = False,
        list_types: Annotated[bool, typer.Option(help="List the types and exit")] = False,
        threads: Threads = None,
        as_json: AsJson = False,
    ) -> None:
        """Quantize a GGUF model with llama.cpp's quantizer (a re-quantized source is flagged)."""
        from tandem.optimize import quantize as q

        if list_types:
            console.print("--type: " + ", ".join(q.quant_types()))
            console.print("tensor types: " + ", ".join(q.tensor_types()))
            return
        with clear_errors():
            overrides = []
            for item in tensor_type or []:
                pattern, sep, ttype = item.rpartition("=")
                if not sep or not pattern:
                    raise ConfigError(f"--tensor-type {item!r}: write PATTERN=TYPE, "
                                      "e.g. ffn_down=q3_K.")
                overrides.append((pattern, ttype))
            plan = q.quantize(model_file(src), out, qtype, embd_type=embd_type,
                              output_type=output_type, tensor_types=overrides, imatrix=imatrix,
                              dry_run=dry_run, pure=pure, n_threads=threads)
        if as_json:
            typer.echo(json.dumps(plan.to_dict(), indent=2))
            return
        if dry_run:
            table = Table(title=f"{plan.type} plan for {Path(plan.src).name}")
            for col in ("tensor", "shape", "from", "to", "MiB", "fallback"):
                table.add_column(col)
            for t in plan.tensors:
                table.add_row(t.name, "×".join(map(str, t.shape)), t.src_type, t.dst_type,
                              f"{t.src_mib:.2f} → {t.dst_mib:.2f}", "yes" if t.fallback else "")
            console.print(table)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(plan.dst_type_counts().items()))
        verb = "would be" if dry_run else "is"
        console.print(f"{plan.type}: {plan.src_mib:.2f} MiB ({plan.src_bpw:.2f} bpw) → "
                      f"{plan.dst_mib:.2f} MiB ({plan.dst_bpw:.2f} bpw); tensors: {counts}")
        if plan.n_fallback:
            console.print(f"[yellow]{plan.n_fallback} tensors fell back to another type "
                          "(their width is not a multiple of the 256-wide k-quant block)[/yellow]")
        if plan.requantized_from:
            console.print(f"[yellow]The source is already quantized ({plan.requantized_from}): "
                          "the result carries both quantization errors.[/yellow]")
        if not dry_run:
            console.print(f"The output {verb} {out}.")

    @app.command()
    def dequantize(
        src: ModelArg,
        out: Annotated[Path, typer.Argument(help="Output GGUF")],
        out_type: Annotated[str, typer.Option("--type", help="F32 or F16")] = "F32",
    ) -> None:
        """Dequantize every tensor (gguf-py) into a GGUF that llama.cpp loads: a reference."""
        from tandem.optimize.gguf_io import dequantize as run

        with clear_errors():
            summary = run(model_file(src), out, out_type)
        console.print(f"Wrote {out}: {summary.size_bytes / 1e6:.1f} MB, "
                      f"{summary.n_params:,} parameters, {summary.file_type}.")

    @app.command()
    def imatrix(
        model: ModelArg,
        out: Annotated[Path, typer.Argument(help="Output imatrix (GGUF)")],
        text: Annotated[Path, typer.Option(help="Calibration text (not the evaluation text)")],
        chunks: Annotated[int | None, typer.Option(help="At most N chunks (default: all)")]
        = None,
        ctx: Annotated[int, typer.Option(help="Chunk length in tokens")] = 512,
        threads: Threads = None,
        data_dir: DataDir = None,
    ) -> None:
        """Importance matrix (per input column mean of x² per weight) from calibration text."""
        from tandem.datadirs import default_data_dir
        from tandem.optimize.evaluate import PPL_FILE
        from tandem.optimize.imatrix import compute_imatrix

        with clear_errors():
            if not text.is_file():
                raise ConfigError(f"No calibration text at {text}.", param="text")
            test = (data_dir or default_data_dir()) / PPL_FILE
            if test.is_file() and test.resolve() == text.resolve():
                raise ConfigError("That is the perplexity test text: calibrating on it would "
                                  "flatter every imatrix variant. Use "
                                  "wikitext2_valid_tokenized.txt (or other text).", param="text")
            with progress_bar(console) as progress:
                result, ppl = compute_imatrix(
                    model_file(model), text.read_text(encoding="utf-8"), dataset=text.name,
                    n_ctx=ctx, limit=chunks, n_threads=threads,
                    progress=lambda i, n: progress("imatrix", i, n))
            out.parent.mkdir(parents=True, exist_ok=True)
            result.save(out)
        console.print(f"Wrote {out}: {len(result.sums)} weights, {result.chunk_count} chunks of "
                      f"{ctx}; calibration perplexity {ppl['ppl']:.3f}.")

    @app.command()
    def evaluate(
        models: Annotated[list[str], typer.Argument(help="GGUF files (or bundled names)")],
        ref: Annotated[str | None, typer.Option(help="Reference model for KL divergence")]
        = None,
        tasks: Tasks = None,
        limit: Limit = None,
        chunks: Chunks = None,
        ctx: Annotated[int, typer.Option(help="Perplexity context (llama.cpp: 512)")] = 512,
        perf_ctx: Annotated[int, typer.Option(help="Context for the RSS/speed run")] = 2048,
        data_dir: DataDir = None,
        out: Annotated[Path | None, typer.Option(help="Write one NAME.json per model here")]
        = None,
        no_cache: Annotated[bool, typer.Option(help="Measure again even if cached")] = False,
        threads: Threads = None,
        as_json: AsJson = False,
    ) -> None:
        """Perplexity, KL divergence, task accuracy, size, RSS and speed (cached per file)."""
        from tandem.optimize.evaluate import evaluate as run

        with clear_errors():
            paths = [model_file(m) for m in models]
            if tasks is None:
                tasks = ALL if ref else ALL.replace("kld,", "")
            options = _options(data_dir, tasks, chunks, limit, ctx, perf_ctx, threads, no_cache)
            with progress_bar(console if not as_json else Console(stderr=True)) as progress:
                results = run(paths, options, reference=model_file(ref) if ref else None,
                              progress=progress)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for r in results:
                (out / f"{r['model']['name']}.json").write_text(json.dumps(r, indent=2))
        if as_json:
            typer.echo(json.dumps(results, indent=2))
        else:
            console.print(_results_table(results))

    @app.command()
    def frontier(
        directory: Annotated[Path, typer.Argument(help="Folder of GGUF variants")],
        ref: Annotated[str | None, typer.Option(help="Reference model (default: the one F32 "
                                                      "file in the folder)")] = None,
        tasks: Tasks = None,
        limit: Limit = None,
        chunks: Chunks = None,
        plot: Annotated[Path | None, typer.Option(help="Write the PNG here")] = None,
        out: Annotated[Path | None, typer.Option(help="Write the frontier JSON here")] = None,
        data_dir: DataDir = None,
        threads: Threads = None,
        as_json: AsJson = False,
    ) -> None:
        """Every variant as a point: size vs KLD and vs accuracy, Pareto front marked."""
        from tandem.optimize import frontier as fr

        with clear_errors():
            options = _options(data_dir, tasks or ALL, chunks, limit, 512, 2048, threads, False)
            with progress_bar(console if not as_json else Console(stderr=True)) as progress:
                front, data = fr.run_frontier(directory, None if ref is None else model_file(ref),
                                              options, plot=plot, out=out, progress=progress)
        if as_json:
            typer.echo(json.dumps(data, indent=2))
        else:
            console.print(fr.table(front))
            if plot is not None:
                console.print(f"Plot: {plot}")


def register_model_surgery(app: typer.Typer, console: Console,
                           clear_errors: Callable[[], contextlib.AbstractContextManager[None]]
                           ) -> None:
    """Add ``prune`` and ``distill`` to ``app``.

    Long by nature: a table of commands, one nested function each (typer reads their
    signatures as the options).
    """

    @app.command()
    def prune(
        src: ModelArg,
        out: Annotated[Path, typer.Argument(help="Output GGUF (F32)")],
        text: Annotated[Path, typer.Option(help="Calibration text for importance")],
        drop_layers: Annotated[int, typer.Option(help="Remove N blocks (lowest influence)")] = 0,
        ffn: Annotated[int | None, typer.Option(help="Feed-forward width to keep")] = None,
        kv_groups: Annotated[int | None, typer.Option(help="KV heads (with their query "
                                                           "heads) to keep")] = None,
        hidden: Annotated[int | None, typer.Option(help="Embedding width to keep")] = None,
        chunks: Annotated[int, typer.Option(help="Calibration chunks of 512 tokens")] = 16,
        threads: Threads = None,
        as_json: AsJson = False,
    ) -> None:
        """Structured pruning (depth, FFN, KV groups, hidden) by activation importance."""
        from tandem.optimize.prune import PruneSpec
        from tandem.optimize.prune import prune as run

        with clear_errors():
            if not text.is_file():
                raise ConfigError(f"No calibration text at {text}.", param="text")
            spec = PruneSpec(drop_layers=drop_layers, ffn=ffn, kv_groups=kv_groups,
                             hidden=hidden)
            with progress_bar(console if not as_json else Console(stderr=True)) as progress:
                report = run(model_file(src), out, spec, text.read_text(encoding="utf-8"),
                             dataset=text.name, chunks=chunks, n_threads=threads,
                             progress=lambda i, n: progress("calibration", i, n))
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
            return
        console.print(f"Wrote {out}: {report.shape_before} → {report.shape_after}")
        if report.dropped_layers:
            console.print(f"dropped blocks {report.dropped_layers} (lowest block influence)")
        console.print(f"non-embedding parameters {report.non_embedding_before:,} → "
                      f"{report.non_embedding_after:,} (−{report.non_embedding_pruned:.1%})")

    @app.command()
    def distill(
        student: ModelArg,
        teacher: ModelArg,
        out: Annotated[Path, typer.Argument(help="Output GGUF (F32)")],
        text: Annotated[Path | None, typer.Option(help="Training text (logit distillation)")]
        = None,
        task: Annotated[str | None, typer.Option(help="arc_easy or piqa: sequence-level "
                                                      "distillation on the task's even items")]
        = None,
        steps: Annotated[int, typer.Option(help="Optimizer steps (one chunk each)")] = 300,
        chunks: Annotated[int, typer.Option(help="Distinct training chunks")] = 200,
        seq_len: Annotated[int, typer.Option(help="Tokens per chunk")] = 512,
        lr: Annotated[float, typer.Option(help="Peak learning rate")] = 1e-4,
        alpha_ce: Annotated[float, typer.Option(help="Weight of cross-entropy vs KL")] = 0.1,
        top_k: Annotated[int, typer.Option(help="Teacher tokens kept per position")] = 32,
        epochs: Annotated[int, typer.Option(help="Epochs (with --task)")] = 2,
        workdir: Annotated[Path | None, typer.Option(help="Checkpoints and teacher cache "
                                                          "(default: OUT.work/)")] = None,
        data_dir: DataDir = None,
        threads: Threads = None,
        as_json: AsJson = False,
    ) -> None:
        """Heal a pruned student from a teacher (PyTorch, CPU); resumable; exports GGUF."""
        from tandem.optimize import distill as d
        from tandem.optimize.torch_llama import require_torch

        with clear_errors():
            require_torch()
            work = workdir or out.with_name(out.name + ".work")
            with progress_bar(console if not as_json else Console(stderr=True)) as progress:
                def report(label: str, i: int, n: int, extra: dict[str, float]) -> None:
                    progress(label, i, n)

                if task is not None:
                    from tandem.datadirs import default_data_dir
                    from tandem.optimize.evaluate import MC_FILES, load_items

                    if task not in MC_FILES:
                        raise ConfigError(f"--task must be one of {', '.join(MC_FILES)}.")
                    items = load_items((data_dir or default_data_dir()) / MC_FILES[task], None)
                    result = d.task_distill(model_file(student), model_file(teacher), out,
                                            items[0::2], epochs=epochs, lr=lr, workdir=work,
                                            n_threads=threads, progress=report)
                else:
                    if text is None or not text.is_file():
                        raise ConfigError("Give --text FILE (training text) or --task.")
                    config = d.DistillConfig(steps=steps, seq_len=seq_len, lr=lr,
                                             alpha_ce=alpha_ce, top_k=top_k, n_threads=threads)
                    result = d.distill(model_file(student), model_file(teacher), out,
                                       text.read_text(encoding="utf-8"), chunks=chunks,
                                       config=config, workdir=work, progress=report)
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            console.print(f"Wrote {out}.")
