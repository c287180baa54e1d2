"""Speed and memory of one GGUF model on this machine, measured in a process of its own.

Run as ``python -m tandem.optimize.perf MODEL --ctx N``; prints one JSON object. A fresh process
makes the peak RSS the model's own (not the evaluator's other models), and keeps llama.cpp's
thread team from competing with another context's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tandem.errors import ConfigError
from tandem.local.memory import peak_rss_kib

PROMPT = (
    "The history of the region is long and varied. Farmers settled the river valleys first, "
    "and towns grew where the roads crossed. "
)


def measure(model: Path, *, n_ctx: int, n_threads: int | None, prefill_tokens: int = 512,
            decode_tokens: int = 64, repeats: int = 3) -> dict[str, Any]:
    """Load ``model`` with an ``n_ctx`` context; time prefill and greedy decode (medians)."""
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=str(model), n_ctx=n_ctx, n_batch=512,
                n_threads=n_threads or os.cpu_count(), verbose=False)
    load_s = time.perf_counter() - started
    tokens = llm.tokenize((PROMPT * 200).encode())[: min(prefill_tokens, n_ctx - decode_tokens - 1)]
    prefill, decode = [], []
    for _ in range(repeats):
        llm.reset()  # type: ignore[no-untyped-call]
        t0 = time.perf_counter()
        llm.eval(tokens)
        prefill.append(len(tokens) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        n = 0
        for _tok in llm.generate(tokens, temp=0.0, reset=True):
            n += 1
            if n >= decode_tokens:
                break
        decode.append(n / (time.perf_counter() - t0))
    peak_kib = peak_rss_kib()
    return {
        "n_ctx": n_ctx,
        "load_s": load_s,
        "prefill_tokens": len(tokens),
        "prefill_tps": statistics.median(prefill),
        "decode_tokens": decode_tokens,
        "decode_tps": statistics.median(decode),
        "peak_rss_mb": peak_kib * 1024 / 1e6,
        "threads": n_threads or os.cpu_count(),
    }


def measure_in_subprocess(model: Path, *, n_ctx: int, n_threads: int | None,
                          timeout_s: float = 600) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tandem.optimize.perf", str(model), "--ctx", str(n_ctx)]
    if n_threads:
        cmd += ["--threads", str(n_threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"Measuring {model} failed: {proc.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print(json.dumps(measure(args.model, n_ctx=args.ctx, n_threads=args.threads)))


if __name__ == "__main__":
    main()
