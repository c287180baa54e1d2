"""Quantization tools on the real bundled SmolLM2 through the real llama.cpp.

The GGUF round trip (dequantize with gguf-py → quantize with llama.cpp → load → sensible text),
the imatrix collected from llama.cpp's forward pass, the quantizer's dry-run plan, the scoring
paths agreeing with each other, and the evaluate/frontier commands end to end on small fixture
data (not the evaluation data set).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tandem.catalog import bundled_path
from tandem.cli import app
from tandem.optimize.gguf_io import dequantize, summarize
from tandem.optimize.imatrix import compute_imatrix
from tandem.optimize.quantize import quantize
from tandem.scoring import Scorer

FIXTURES = Path(__file__).parents[1] / "data" / "optimize"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder with the F32 reference of the shipped model (made once for the module)."""
    root = tmp_path_factory.mktemp("optimize")
    dequantize(bundled_path("smollm2"), root / "ref-f32.gguf")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(FIXTURES / "text.raw", d / "wikitext2_test.raw")
    shutil.copy(FIXTURES / "arc_easy_dev.jsonl", d / "arc_easy_dev.jsonl")
    shutil.copy(FIXTURES / "piqa_dev.jsonl", d / "piqa_dev.jsonl")
    return d


def _greedy(path: Path, prompt: str, n: int = 4) -> str:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, verbose=False)
    try:
        out = llm.create_completion(prompt, max_tokens=n, temperature=0.0)
        return str(out["choices"][0]["text"])
    finally:
        llm.close()


def _next_token_rows(path: Path, text: str) -> np.ndarray:
    scorer = Scorer(path, n_ctx=256)
    try:
        return scorer.logprobs(scorer.tokenize(text, special=True))
    finally:
        scorer.close()


def test_round_trip_dequantize_quantize_load(work: Path) -> None:
    ref = work / "ref-f32.gguf"
    summary = summarize(ref)
    assert summary.file_type == "ALL_F32"
    assert set(summary.type_counts()) == {"F32"}
    assert summary.n_params == summarize(bundled_path("smollm2")).n_params

    # The reference computes what the shipped model computes (up to llama.cpp's Q8 activations).
    shipped = _next_token_rows(bundled_path("smollm2"), PROMPT)
    dense = _next_token_rows(ref, PROMPT)
    assert shipped[-1].argmax() == dense[-1].argmax()
    assert np.abs(np.exp(shipped) - np.exp(dense)).sum(axis=1).max() < 0.5

    q8 = work / "q8_0.gguf"
    plan = quantize(ref, q8, "Q8_0")
    assert plan.written is not None and plan.requantized_from is None
    assert summarize(q8).type_counts().get("Q8_0", 0) >= 200
    assert "Paris" in _greedy(q8, PROMPT)


def test_more_bits_mean_less_divergence(work: Path, data_dir: Path) -> None:
    from tandem.optimize.evaluate import EvalOptions, ResultCache, evaluate

    ref = work / "ref-f32.gguf"
    quantize(ref, work / "q8_0.gguf", "Q8_0")
    quantize(ref, work / "q4_0-e.gguf", "Q4_0", embd_type="q4_0")
    options = EvalOptions(data_dir=data_dir, tasks=("ppl", "kld"), chunks=2)
    q8, q4 = evaluate([work / "q8_0.gguf", work / "q4_0-e.gguf"], options, reference=ref,
                      cache=ResultCache(work / "cache-kld"))
    assert q8["kld"]["mean"] < q4["kld"]["mean"]
    assert q8["kld"]["same_top"] > q4["kld"]["same_top"]
    assert q8["perplexity"]["n_scored"] == 2 * 255  # llama-perplexity: second half of 2 chunks
    assert 1.0 < q8["perplexity"]["ppl"] < q4["perplexity"]["ppl"]


def test_continuation_scoring_matches_a_full_pass(work: Path) -> None:
    scorer = Scorer(bundled_path("smollm2"), n_ctx=256)
    try:
        ctx = scorer.tokenize("Question: Which gas do plants take in?\nAnswer:", special=True)
        conts = [scorer.tokenize(" carbon dioxide"), scorer.tokenize(" helium")]
        shared = scorer.continuation_logprob(ctx, conts)
        for cont, got in zip(conts, shared, strict=True):
            rows = scorer.logprobs(ctx + cont)
            full = sum(float(rows[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
            assert got == pytest.approx(full, abs=2e-3)
        assert shared[0] > shared[1]
    finally:
        scorer.close()


def test_imatrix_covers_every_weight_and_steers_the_quantizer(work: Path) -> None:
    ref = work / "ref-f32.gguf"
    text = (FIXTURES / "text.raw").read_text()
    im, ppl = compute_imatrix(ref, text, dataset="text.raw", n_ctx=128, limit=3)
    weights = {t.name for t in summarize(ref).tensors if len(t.shape) == 2}
    assert weights <= set(im.sums)  # every matrix, the tied output (token_embd) included
    assert all(im.counts[w] == 3 * 128 for w in weights)
    assert all((im.means()[w] > 0).all() for w in weights)
    assert 1.0 < ppl["ppl"] < 200
    im_path = work / "im.gguf"
    im.save(im_path)
    quantize(ref, work / "q4_0-plain.gguf", "Q4_0")
    quantize(ref, work / "q4_0-im.gguf", "Q4_0", imatrix=im_path)
    # The quantizer used the importance: the error it weighs is lower than without it.
    name = "blk.5.attn_q.weight"
    original = _tensor(ref, name)
    weights = im.means()[name]
    plain = _tensor(work / "q4_0-plain.gguf", name)
    weighted = _tensor(work / "q4_0-im.gguf", name)
    assert float((weights * (weighted - original) ** 2).sum()) < float(
        (weights * (plain - original) ** 2).sum()
    )
    assert "Paris" in _greedy(work / "q4_0-im.gguf", PROMPT)
    from gguf import GGUFReader

    fields = GGUFReader(str(work / "q4_0-im.gguf")).fields  # provenance, as llama-quantize
    assert fields["quantize.imatrix.entries_count"].contents() == len(im.sums)
    assert fields["quantize.imatrix.dataset"].contents() == "text.raw"


def _tensor(path: Path, name: str) -> np.ndarray:
    from gguf import GGUFReader
    from gguf.quants import dequantize as gguf_dequantize

    (t,) = [t for t in GGUFReader(str(path)).tensors if t.name == name]
    return np.asarray(gguf_dequantize(t.data, t.tensor_type), np.float64)


def test_dry_run_shows_fallbacks_and_writes_nothing(tmp_path: Path) -> None:
    plan = quantize(bundled_path("smollm2"), None, "Q4_K_M", dry_run=True)
    assert plan.requantized_from == "Q4_1"
    assert plan.n_fallback > 0
    # llama.cpp falls back exactly where the row width is not a multiple of 256.
    for t in plan.tensors:
        if t.fallback:
            assert t.shape[0] % 256 != 0
    assert any(t.dst_type == "Q4_K" and t.shape[0] % 256 == 0 for t in plan.tensors)
    assert plan.dst_mib > 0 and list(tmp_path.iterdir()) == []


def test_evaluate_and_frontier_commands(work: Path, data_dir: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_EVAL_CACHE", str(tmp_path / "cache"))
    variants = tmp_path / "variants"
    variants.mkdir()
    ref = work / "ref-f32.gguf"
    quantize(ref, variants / "q8_0.gguf", "Q8_0")
    quantize(ref, variants / "q4_0.gguf", "Q4_0", embd_type="q4_0")
    runner = CliRunner()
    result = runner.invoke(app, [
        "evaluate", str(variants / "q4_0.gguf"), "--ref", str(ref), "--tasks",
        "ppl,kld,arc_easy,piqa", "--chunks", "1", "--data-dir", str(data_dir), "--json",
    ])
    assert result.exit_code == 0, result.output
    (one,) = json.loads(result.stdout[result.stdout.index("[") :])
    assert one["tasks"]["arc_easy"]["n"] == 6 and one["tasks"]["piqa"]["n"] == 3
    assert one["kld"]["mean"] > 0

    plot = tmp_path / "frontier.png"
    out = tmp_path / "frontier.json"
    result = runner.invoke(app, [
        "frontier", str(variants), "--ref", str(ref), "--tasks", "ppl,kld,arc_easy",
        "--chunks", "1", "--data-dir", str(data_dir), "--plot", str(plot), "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    names = {p["name"] for p in data["points"]}
    assert names == {"q8_0", "q4_0", "ref-f32"}
    assert data["reference"] == "ref-f32"
    assert "q4_0" in data["kld_front"]  # the smallest variant is always on the front
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    bad = runner.invoke(app, ["evaluate", str(tmp_path / "missing.gguf"), "--data-dir",
                              str(data_dir)])
    assert bad.exit_code == 1 and "No model" in bad.output
