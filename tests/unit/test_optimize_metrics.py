"""Evaluation metrics on tiny hand-made distributions; the quantizer-log parser; imatrix files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tandem.errors import ConfigError
from tandem.optimize.evaluate import EvalOptions, ResultCache, load_items
from tandem.optimize.imatrix import Imatrix
from tandem.optimize.metrics import (
    Choice,
    StreamStats,
    accuracy,
    choose,
    chunks,
    perplexity_and_kld,
)
from tandem.optimize.quantize import QuantizePlan, parse_log
from tandem.scoring import log_softmax


def test_log_softmax_normalises_each_row() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]], np.float32)
    out = log_softmax(logits)
    assert np.allclose(np.exp(out).sum(axis=1), 1.0, atol=1e-6)
    expected = logits[0] - math.log(sum(math.exp(x) for x in logits[0]))
    assert np.allclose(out[0], expected, atol=1e-6)
    assert np.allclose(out[1, :2], math.log(0.5), atol=1e-6)  # no overflow at large logits


def test_chunks_follow_llama_perplexity() -> None:
    tokens = list(range(10, 35))  # 25 tokens
    got = chunks(tokens, 8, bos=1)
    assert len(got) == 3  # the trailing partial chunk is dropped
    assert [c[0] for c in got] == [1, 1, 1]  # first token replaced by BOS
    assert got[1][1:] == tokens[9:16]
    assert chunks(tokens, 8, bos=None)[0] == tokens[:8]
    assert len(chunks(tokens, 8, bos=None, limit=2)) == 2


def _rows(probs: list[list[float]]) -> np.ndarray:
    return np.log(np.asarray(probs, np.float64)).astype(np.float32)


def test_stream_stats_perplexity_and_kld_by_hand() -> None:
    stats = StreamStats()
    model = _rows([[0.9, 0.1], [0.25, 0.75]])
    ref = _rows([[0.3, 0.7], [0.25, 0.75]])
    stats.add(model, [0, 1], ref)
    ppl = stats.perplexity()
    assert ppl["ppl"] == pytest.approx(math.exp(-(math.log(0.9) + math.log(0.75)) / 2), rel=1e-5)
    kld = stats.divergence()
    assert kld is not None
    first = 0.3 * math.log(0.3 / 0.9) + 0.7 * math.log(0.7 / 0.1)
    assert kld["mean"] == pytest.approx(first / 2, rel=1e-4)
    assert kld["max"] == pytest.approx(first, rel=1e-4)
    assert kld["same_top"] == pytest.approx(0.5)  # the top token differs on row 0 only


def test_no_reference_means_no_kld() -> None:
    stats = StreamStats()
    stats.add(_rows([[0.5, 0.5]]), [1], None)
    assert stats.divergence() is None
    assert stats.perplexity()["ppl"] == pytest.approx(2.0, rel=1e-5)


class _Uniform:
    """A fake model: uniform over ``vocab`` at every position, records what it was given."""

    def __init__(self, n_ctx: int, vocab: int, add_bos: bool = True):
        self.n_ctx, self.vocab, self.add_bos, self.bos = n_ctx, vocab, add_bos, 99
        self.seen: list[list[int]] = []

    def logprobs(self, tokens: list[int]) -> np.ndarray:
        self.seen.append(list(tokens))
        return np.full((len(tokens), self.vocab), -math.log(self.vocab), np.float32)


def test_only_the_second_half_of_each_chunk_is_scored() -> None:
    model = _Uniform(n_ctx=16, vocab=7)
    stats = perplexity_and_kld(model, [i % 7 for i in range(50)], reference=_Uniform(16, 7))
    assert stats.n_chunks == 3
    assert len(stats.nll) == 3 * (16 - 1 - 8)  # positions 8..14 predict tokens 9..15
    assert stats.perplexity()["ppl"] == pytest.approx(7.0, rel=1e-5)
    assert all(seq[0] == 99 for seq in model.seen)  # BOS replaces each chunk's first token
    kld = stats.divergence()
    assert kld is not None and kld["mean"] == pytest.approx(0.0, abs=1e-6)


def test_too_short_text_is_an_error() -> None:
    with pytest.raises(ValueError, match="fewer than 16"):
        perplexity_and_kld(_Uniform(16, 7), list(range(10)))


def test_length_normalisation_can_change_the_choice() -> None:
    conts = [" a", " a much longer answer"]
    raw, norm = choose([-2.0, -5.0], conts)
    assert raw == 0  # the short answer has the higher total log-likelihood
    assert norm == 1  # but the long one has more per byte
    result = accuracy([(1, raw, norm), (0, 0, 0)])
    assert result["acc"] == 1.0 and result["acc_raw"] == 0.5 and result["n"] == 2


def test_choice_prompt_format() -> None:
    item = Choice.from_json({"query": "Question: Why?\n", "choices": ["x ", "y"], "gold": 1})
    assert item.context() == "Question: Why?\nAnswer:"
    assert item.continuations() == [" x", " y"]


def test_load_items_reports_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": "q"}\n')
    with pytest.raises(ConfigError, match=":2:"):
        load_items(path, None)
    assert len(load_items(path, 1)) == 1


DRY_LOG = """\
[   1/ 272] output_norm.weight                   - [   576,      1,      1,      1], type =    f32, size =    0.002 MiB
[   8/ 272] blk.0.ffn_down.weight                - [  1536,    576,      1,      1], type =   q4_1, size =     0.53 MiB ->     0.69 MiB (q6_K)
[   6/ 272] blk.0.attn_q.weight                  - [   576,    576,      1,      1], type =   q4_1, size =     0.20 MiB ->     0.22 MiB (q5_0)
warning: blk.0.attn_q.weight                  - ncols    576 not divisible by 256 (required for type    q4_K) -> falling back to    q5_0
llama_model_quantize_impl: model size  =    92.10 MiB (5.74 BPW)
llama_model_quantize_impl: quant size  =    98.87 MiB (6.17 BPW)
"""  # noqa: E501 (llama.cpp's own log lines)

RUN_LOG = """\
[   2/ 272] token_embd.weight                    - [   576,  49152,      1,      1], type =   q8_0, size =   28.688 MiB
[   3/ 272] blk.0.attn_k.weight                  - [   576,    192,      1,      1], type =   q4_1, converting to q5_0 .. size =     0.07 MiB ->     0.07 MiB
"""  # noqa: E501


def test_parse_dry_run_log() -> None:
    plan = QuantizePlan(src="m.gguf", out=None, type="Q4_K_M", dry_run=True)
    parse_log(DRY_LOG.splitlines(), plan)
    by_name = {t.name: t for t in plan.tensors}
    assert by_name["blk.0.ffn_down.weight"].dst_type == "Q6_K"
    assert by_name["blk.0.ffn_down.weight"].shape == (1536, 576)
    assert by_name["output_norm.weight"].dst_type == "F32"
    assert by_name["output_norm.weight"].shape == (576,)
    assert by_name["blk.0.attn_q.weight"].fallback
    assert not by_name["blk.0.ffn_down.weight"].fallback
    assert plan.n_fallback == 1
    assert (plan.src_mib, plan.dst_mib, plan.dst_bpw) == (92.10, 98.87, 6.17)


def test_parse_real_run_log() -> None:
    plan = QuantizePlan(src="m.gguf", out="o.gguf", type="Q4_K_M")
    parse_log(RUN_LOG.splitlines(), plan)
    assert [(t.src_type, t.dst_type) for t in plan.tensors] == [("Q8_0", "Q8_0"), ("Q4_1", "Q5_0")]
    assert plan.tensors[0].dst_mib == plan.tensors[0].src_mib == 28.688


def test_imatrix_means_and_file_round_trip(tmp_path: Path) -> None:
    im = Imatrix(datasets=["calib.txt"], chunk_size=8)
    im.add("blk.0.attn_q.weight", np.array([[1.0, 2.0], [3.0, 0.0]], np.float32))
    im.add("blk.0.attn_q.weight", np.array([[1.0, 2.0]], np.float32))
    im.chunk_count = 2
    assert np.allclose(im.means()["blk.0.attn_q.weight"], [(1 + 9 + 1) / 3, (4 + 0 + 4) / 3])
    path = tmp_path / "im.gguf"
    im.save(path)
    back = Imatrix.load(path)
    assert back.counts == {"blk.0.attn_q.weight": 3}
    assert np.allclose(back.means()["blk.0.attn_q.weight"], im.means()["blk.0.attn_q.weight"])
    assert back.chunk_count == 2
    with pytest.raises(ValueError, match="width changed"):
        im.add("blk.0.attn_q.weight", np.ones((1, 3), np.float32))


def test_imatrix_load_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigError, match="tandem imatrix"):
        Imatrix.load(bad)


def test_eval_options_check_tasks_and_data(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Unknown task"):
        EvalOptions(data_dir=tmp_path, tasks=("ppl", "mmlu"))
    with pytest.raises(ConfigError, match="--data-dir"):
        EvalOptions(data_dir=tmp_path, tasks=("arc_easy",))
    (tmp_path / "arc_easy_dev.jsonl").write_text("")
    assert EvalOptions(data_dir=tmp_path, tasks=("arc_easy",)).tasks == ("arc_easy",)


def test_result_cache_keeps_sections_apart(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    cache.put("ab" * 32, "ppl|x", {"ppl": 3.0})
    cache.put("ab" * 32, "arc|y", {"acc": 0.5})
    assert cache.get("ab" * 32, "ppl|x") == {"ppl": 3.0}
    assert cache.get("ab" * 32, "arc|y") == {"acc": 0.5}
    assert cache.get("cd" * 32, "ppl|x") is None
    (tmp_path / f"{'ab' * 16}.json").write_text("{broken")
    assert cache.get("ab" * 32, "ppl|x") is None  # a damaged cache is a miss, not a crash
