"""The memory plan against what llama.cpp really makes resident.

Each case loads a bundled model in a fresh interpreter and fills its whole context in
n_batch-token batches: the last batch attends to every cache cell, which is when the compute
buffer is at its largest. A short generation would not show that part (llama.cpp reserves the
buffer for the worst case, but only pages a real graph writes become resident), so comparing
against it would flatter plans with large contexts. The baseline is taken after importing
llama_cpp, as in the gateway, which imports it before loading a model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tandem.catalog import resolve_model
from tandem.local.memory import ggml_kv_type, needs_flash_attn, plan_memory
from tandem.settings import KvType

pytestmark = pytest.mark.integration

_CHILD = textwrap.dedent(
    """
    import json, os, sys
    import llama_cpp, psutil

    path, flash_attn = sys.argv[1], sys.argv[4] == "1"
    n_ctx, ggml_type = int(sys.argv[2]), int(sys.argv[3])
    proc = psutil.Process()
    before = proc.memory_info().rss
    llm = llama_cpp.Llama(
        path, n_ctx=n_ctx, n_batch=512, type_k=ggml_type, type_v=ggml_type,
        flash_attn=flash_attn, n_threads=os.cpu_count(), use_mmap=True, verbose=False,
    )
    llm.eval(llm.tokenize(b" the cat sat on the mat" * n_ctx)[: n_ctx - 8])
    print(json.dumps({"rss_delta": proc.memory_info().rss - before}))
    """
)


def _measured_rss_delta(path: str, n_ctx: int, kv_type: KvType) -> int:
    args = [path, str(n_ctx), str(ggml_kv_type(kv_type)), str(int(needs_flash_attn(kv_type)))]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(json.loads(done.stdout.strip().splitlines()[-1])["rss_delta"])


@pytest.mark.parametrize(
    ("model", "n_ctx", "kv_type"), [("smollm2", 2048, "f16"), ("gemma3-270m", 2048, "q8_0")]
)
def test_plan_matches_resident_memory(model: str, n_ctx: int, kv_type: KvType) -> None:
    path, _ = resolve_model(model)
    plan = plan_memory(path, n_ctx, kv_type)
    measured = _measured_rss_delta(str(path), n_ctx, kv_type)
    assert plan.total_bytes == pytest.approx(measured, rel=0.15), (
        f"plan {plan.total_bytes / 2**20:.1f} MiB vs RSS delta {measured / 2**20:.1f} MiB"
    )


def test_kv_type_ids_match_llama_cpp() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    assert ggml_kv_type("f16") == llama_cpp.GGML_TYPE_F16
    assert ggml_kv_type("q8_0") == llama_cpp.GGML_TYPE_Q8_0
    assert ggml_kv_type("q4_0") == llama_cpp.GGML_TYPE_Q4_0
