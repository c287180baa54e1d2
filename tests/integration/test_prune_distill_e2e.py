"""Pruning and distillation on the real SmolLM2 through the real llama.cpp.

The PyTorch forward pass agrees with llama.cpp's logits (unpruned and after hidden-channel
surgery, which needs the explicit head width in the metadata); pruned files load in llama.cpp
and generate text; a short distillation run lowers the KL divergence to the teacher, resumes
from its checkpoint, and exports a GGUF that llama.cpp loads and the gateway serves.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tandem.catalog import bundled_path
from tandem.optimize.distill import DistillConfig, distill
from tandem.optimize.gguf_io import dequantize, summarize
from tandem.optimize.prune import PruneSpec, prune
from tandem.optimize.torch_llama import load_model
from tandem.scoring import Scorer
from tests.integration.gateway_proc import gateway_process

FIXTURES = Path(__file__).parents[1] / "data" / "optimize"
TEXT = (FIXTURES / "text.raw").read_text()


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("surgery")
    path = dequantize(bundled_path("smollm2"), root / "ref-f32.gguf").path
    yield path
    shutil.rmtree(root, ignore_errors=True)


def _agreement(path: Path, text: str) -> tuple[float, float, float]:
    """(max |Δlogit|, max |logit|, top-1 agreement) of PyTorch vs llama.cpp on ``text``.

    llama.cpp runs with an F32 KV cache here: its default F16 cache rounds keys and values,
    which alone moves logits by a few hundredths over 48 tokens.
    """
    from llama_cpp import GGML_TYPE_F32, Llama

    llm = Llama(model_path=str(path), n_ctx=128, logits_all=True, type_k=GGML_TYPE_F32,
                type_v=GGML_TYPE_F32, verbose=False)
    tokens = llm.tokenize(text.encode())[:48]
    llm.eval(tokens)
    ours = np.array(llm.scores[: len(tokens)])
    llm.close()
    model = load_model(path)
    with torch.no_grad():
        theirs = model(torch.tensor([tokens]))[0].numpy()
    diff = float(np.abs(ours - theirs).max())
    return diff, float(np.abs(ours).max()), float((ours.argmax(1) == theirs.argmax(1)).mean())


def test_pytorch_forward_matches_llama_cpp(ref: Path) -> None:
    diff, scale, top1 = _agreement(ref, TEXT)
    assert diff < 2e-3 and scale > 10  # both compute in F32: what is left is rounding
    assert top1 == 1.0


def test_pruned_files_load_and_agree(ref: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned.gguf"
    report = prune(ref, out, PruneSpec(drop_layers=2, ffn=1024, kv_groups=2, hidden=512), TEXT,
                   chunks=2)
    assert report.shape_after == {"n_layer": 28, "n_head": 6, "n_head_kv": 2, "head_dim": 64,
                                  "n_ff": 1024, "n_embd": 512}
    assert len(report.dropped_layers) == 2 and len(report.block_influence) == 30
    assert report.non_embedding_pruned > 0.35
    summary = summarize(out)
    shapes = {t.name: t.shape for t in summary.tensors}
    assert shapes["blk.27.ffn_down.weight"] == (1024, 512)
    assert "blk.28.ffn_down.weight" not in shapes
    assert shapes["token_embd.weight"] == (512, 49152)
    diff, _, top1 = _agreement(out, TEXT)
    assert diff < 2e-3 and top1 == 1.0
    from llama_cpp import Llama

    llm = Llama(model_path=str(out), n_ctx=128, verbose=False)
    text = llm.create_completion("The river", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    llm.close()
    assert any(c.isalpha() for c in text)


def test_distillation_heals_resumes_and_exports(ref: Path, tmp_path: Path) -> None:
    student = tmp_path / "student.gguf"
    prune(ref, student, PruneSpec(ffn=768), TEXT, chunks=2)
    work = tmp_path / "work"
    config = DistillConfig(steps=6, seq_len=128, lr=3e-4, warmup=1, checkpoint_every=3)
    first = distill(student, ref, tmp_path / "healed.gguf", TEXT, chunks=4,
                    config=DistillConfig(**{**config.__dict__, "steps": 3}), workdir=work)
    assert first["steps"] == 3 and (work / "checkpoint.pt").exists()
    assert len(list((work / "teacher").glob("chunk*.npz"))) == 4
    result = distill(student, ref, tmp_path / "healed.gguf", TEXT, chunks=4, config=config,
                     workdir=work)
    assert result["steps"] == 6  # resumed at 3, not restarted
    kd = [h["kd"] for h in result["history"]]
    assert len(kd) == 6
    assert np.mean(kd[-2:]) < np.mean(kd[:2])  # the student moves toward the teacher
    scorer = Scorer(tmp_path / "healed.gguf", n_ctx=128)
    assert scorer.n_vocab == 49152
    scorer.close()
    json.dumps(result)  # the report is JSON
    # The gateway serves the healed file as its local model (chat template carried over).
    with gateway_process(None, TANDEM_LOCAL_MODEL=str(tmp_path / "healed.gguf")) as url:
        health = httpx.get(url.removesuffix("/v1") + "/healthz").json()
        assert health["local"]["model"] == "healed"
        reply = httpx.post(f"{url}/chat/completions", timeout=60, json={
            "model": "tandem", "max_tokens": 8, "temperature": 0.0,
            "messages": [{"role": "user", "content": "Name a river."}]})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-tandem-route"] == "local"
    assert reply.json()["usage"]["completion_tokens"] > 0


def test_task_distillation_learns_the_teachers_answers(tmp_path: Path) -> None:
    from tandem.optimize.distill import task_distill
    from tandem.optimize.evaluate import load_items

    items = load_items(FIXTURES / "arc_easy_dev.jsonl", None)
    teacher = bundled_path("gemma3-270m")  # another tokenizer: sequence-level KD still works
    out = tmp_path / "student.gguf"
    result = task_distill(bundled_path("smollm2"), teacher, out, items, epochs=2, lr=1e-4,
                          workdir=tmp_path / "work")
    answers = json.loads((tmp_path / "work" / "teacher_answers.json").read_text())
    assert len(answers) == len(items) == result["items"]
    assert all(0 <= a < len(i.choices) for a, i in zip(answers, items, strict=True))
    # After training on them, the student prefers the teacher's answers on these items.
    scorer = Scorer(out, n_ctx=256)
    try:
        agree = 0
        for item, answer in zip(items, answers, strict=True):
            conts = item.continuations()
            lls = scorer.continuation_logprob(scorer.tokenize(item.context(), special=True),
                                              [scorer.tokenize(c) for c in conts])
            per_byte = [ll / len(c.encode()) for ll, c in zip(lls, conts, strict=True)]
            agree += int(np.argmax(per_byte)) == answer
    finally:
        scorer.close()
    assert agree == len(items)
