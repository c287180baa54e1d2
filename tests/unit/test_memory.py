"""Memory plans from GGUF metadata: shapes cross-checked against gguf.GGUFReader, plan arithmetic,
size parsing and the budget error. No llama_cpp here."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest

from tandem.catalog import resolve_model
from tandem.errors import MemoryBudgetError, ModelLoadError
from tandem.local.memory import (
    KV_TYPES,
    ModelShape,
    check_budget,
    ggml_kv_type,
    largest_context,
    needs_flash_attn,
    parse_size,
    plan_memory,
    read_shape,
)

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def smol_path() -> Path:
    return resolve_model("smollm2")[0]


@pytest.fixture(scope="module")
def smol_shape(smol_path: Path) -> ModelShape:
    return read_shape(smol_path)


@pytest.fixture(scope="module")
def reader(smol_path: Path) -> Iterator[gguf.GGUFReader]:
    yield gguf.GGUFReader(smol_path)


def _tensor_shape(reader: gguf.GGUFReader, name: str) -> list[int]:
    tensor = next(t for t in reader.tensors if t.name == name)
    return [int(d) for d in tensor.shape]


# --- read_shape --------------------------------------------------------------------------------


def test_read_shape_matches_the_tensors(
    smol_shape: ModelShape, reader: gguf.GGUFReader, smol_path: Path
) -> None:
    n_embd, n_vocab = _tensor_shape(reader, "token_embd.weight")
    _, q_out = _tensor_shape(reader, "blk.0.attn_q.weight")
    _, k_out = _tensor_shape(reader, "blk.0.attn_k.weight")
    _, v_out = _tensor_shape(reader, "blk.0.attn_v.weight")
    layers = {int(m.group(1)) for t in reader.tensors if (m := re.match(r"blk\.(\d+)\.", t.name))}
    assert smol_shape.arch == "llama"
    assert smol_shape.n_layer == len(layers) == max(layers) + 1
    assert smol_shape.n_embd == n_embd
    assert smol_shape.n_vocab == n_vocab
    assert smol_shape.n_head * smol_shape.head_dim_k == q_out
    assert smol_shape.n_head_kv * smol_shape.head_dim_k == k_out
    assert smol_shape.n_head_kv * smol_shape.head_dim_v == v_out
    assert smol_shape.n_head_kv < smol_shape.n_head  # grouped-query attention
    assert smol_shape.sliding_window is None


def test_read_shape_matches_gguf_reader(smol_shape: ModelShape, reader: gguf.GGUFReader) -> None:
    arch = smol_shape.arch
    assert smol_shape.n_ctx_train == reader.fields[f"{arch}.context_length"].contents()
    assert smol_shape.n_vocab == len(reader.fields["tokenizer.ggml.tokens"].data)
    assert smol_shape.weights_bytes == sum(int(t.n_bytes) for t in reader.tensors)


def test_weights_are_most_of_the_file(smol_shape: ModelShape, smol_path: Path) -> None:
    size = smol_path.stat().st_size
    assert 0.9 * size < smol_shape.weights_bytes < size


def _write_gguf(path: Path, *, with_tokens: bool, head_count_kv: int | list[int]) -> None:
    writer = gguf.GGUFWriter(path, "toy")
    writer.add_block_count(2)
    writer.add_context_length(1024)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    if isinstance(head_count_kv, list):
        writer.add_array("toy.attention.head_count_kv", head_count_kv)
    else:
        writer.add_head_count_kv(head_count_kv)
    writer.add_sliding_window(128)
    if with_tokens:
        writer.add_token_list([f"t{i}" for i in range(2000)])  # long: skipped, not decoded
    writer.add_tensor("token_embd.weight", np.zeros((100, 64), dtype=np.float32))
    writer.add_tensor("blk.0.attn_norm.weight", np.zeros(64, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_read_shape_fallbacks(tmp_path: Path) -> None:
    path = tmp_path / "toy.gguf"
    _write_gguf(path, with_tokens=False, head_count_kv=[2, 1])
    shape = read_shape(path)
    assert (shape.head_dim_k, shape.head_dim_v) == (16, 16)  # n_embd / n_head
    assert shape.n_vocab == 100  # from token_embd
    assert shape.n_head_kv == 2  # the largest layer
    assert shape.sliding_window == 128
    assert shape.weights_bytes == 100 * 64 * 4 + 64 * 2


def test_read_shape_counts_long_token_lists(tmp_path: Path) -> None:
    path = tmp_path / "toy.gguf"
    _write_gguf(path, with_tokens=True, head_count_kv=1)
    assert read_shape(path).n_vocab == 2000


@pytest.mark.parametrize("content", [b"", b"GGML not a model", b"GGUF\x03\x00\x00\x00\xff"])
def test_read_shape_rejects_other_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=r"bad\.gguf"):
        read_shape(path)


# --- plans -------------------------------------------------------------------------------------


def test_kv_cache_is_linear_in_context(smol_path: Path, smol_shape: ModelShape) -> None:
    one, two = plan_memory(smol_path, 1024), plan_memory(smol_path, 2048)
    assert two.kv_cache_bytes == 2 * one.kv_cache_bytes
    per_token_f16 = smol_shape.n_layer * smol_shape.n_head_kv * 2 * smol_shape.head_dim_k * 2
    assert one.kv_cache_bytes == 1024 * per_token_f16
    assert one.weights_bytes == two.weights_bytes == smol_shape.weights_bytes


def test_each_sequence_adds_a_kv_stream_of_the_window(smol_path: Path) -> None:
    one, four = plan_memory(smol_path, 2048), plan_memory(smol_path, 2048, n_seq=4)
    assert four.kv_cache_bytes == 4 * one.kv_cache_bytes
    assert four.kv_cache_bytes == 180 * MIB  # what llama.cpp allocates for 4 × 2048 cells
    assert four.overhead_bytes > one.overhead_bytes  # a row of logits per sequence
    assert four.n_seq == 4 and four.to_dict()["n_seq"] == 4


def test_quantized_kv_is_smaller(smol_path: Path) -> None:
    f16, q8, q4 = (plan_memory(smol_path, 4096, kv) for kv in KV_TYPES)
    assert q4.kv_cache_bytes < q8.kv_cache_bytes < f16.kv_cache_bytes
    assert q8.kv_cache_bytes / f16.kv_cache_bytes == pytest.approx(34 / 64)
    assert q4.total_bytes < q8.total_bytes < f16.total_bytes


def test_quantized_kv_assumes_flash_attention(smol_path: Path) -> None:
    assert not plan_memory(smol_path, 2048).flash_attn
    assert plan_memory(smol_path, 2048, "q8_0").flash_attn
    with_fa = plan_memory(smol_path, 2048, flash_attn=True)
    assert with_fa.compute_bytes < plan_memory(smol_path, 2048).compute_bytes


def test_plan_rounds_context_up_to_whole_blocks(smol_path: Path) -> None:
    rounded, whole = plan_memory(smol_path, 1000), plan_memory(smol_path, 1024)
    assert rounded.kv_cache_bytes == whole.kv_cache_bytes


def test_plan_to_dict_is_json(smol_path: Path) -> None:
    plan = plan_memory(smol_path, 2048, "q4_0")
    data = json.loads(json.dumps(plan.to_dict()))
    parts = ("weights_bytes", "kv_cache_bytes", "compute_bytes", "overhead_bytes")
    assert data["total_bytes"] == plan.total_bytes == sum(data[k] for k in parts)
    assert data["kv_type"] == "q4_0"
    assert data["model_path"] == str(smol_path)


def test_plan_rejects_bad_arguments(smol_path: Path) -> None:
    with pytest.raises(ValueError, match="q8_0"):
        plan_memory(smol_path, 2048, "q5_1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        plan_memory(smol_path, 0)


def test_largest_context_is_the_edge(smol_path: Path) -> None:
    budget = plan_memory(smol_path, 3000).total_bytes
    n_ctx = largest_context(smol_path, budget)
    assert n_ctx is not None and n_ctx % 256 == 0
    assert plan_memory(smol_path, n_ctx).fits(budget)
    assert not plan_memory(smol_path, n_ctx + 256).fits(budget)


def test_largest_context_bounds(smol_path: Path, smol_shape: ModelShape) -> None:
    assert largest_context(smol_path, 1 << 40) == smol_shape.n_ctx_train
    assert largest_context(smol_path, smol_shape.weights_bytes) is None
    budget = plan_memory(smol_path, 4096).total_bytes
    f16, q4 = largest_context(smol_path, budget), largest_context(smol_path, budget, "q4_0")
    assert f16 is not None and q4 is not None and q4 > f16


def test_kv_type_ids_and_flash_attention() -> None:
    # ggml's type enum, as llama.cpp takes it for type_k / type_v
    assert [ggml_kv_type(kv) for kv in KV_TYPES] == [1, 8, 2]
    assert [needs_flash_attn(kv) for kv in KV_TYPES] == [False, True, True]


# --- parse_size and check_budget ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1048576),
        ("512MiB", 512 * MIB),
        ("1.5GiB", 3 * 512 * MIB),
        ("800MB", 800_000_000),
        (" 2 kib ", 2048),
        ("10B", 10),
        (".5KB", 500),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "-1MiB", "12 parsecs", "1e3", "1.2.3GB", "nan"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 512MiB"):
        parse_size(text)


def test_check_budget_passes_when_it_fits(smol_path: Path) -> None:
    plan = plan_memory(smol_path, 2048)
    check_budget(plan, None)
    check_budget(plan, plan.total_bytes)


def test_check_budget_names_the_knobs(smol_path: Path) -> None:
    plan = plan_memory(smol_path, 8192)
    budget = plan_memory(smol_path, 2048).total_bytes
    with pytest.raises(MemoryBudgetError) as info:
        check_budget(plan, budget)
    message = info.value.message
    fits = largest_context(smol_path, budget)
    for needle in ("TANDEM_N_CTX", f"to {fits} or less", "TANDEM_KV_TYPE", "q4_0 fits n_ctx="):
        assert needle in message
    assert "TANDEM_RAM_BUDGET_MIB" in message and "TANDEM_LOCAL_MODEL" in message
    assert info.value.code == "memory_budget_exceeded"


def test_check_budget_when_no_context_fits(smol_path: Path, smol_shape: ModelShape) -> None:
    plan = plan_memory(smol_path, 2048, "q4_0")
    with pytest.raises(MemoryBudgetError, match="even 256 does not fit"):
        check_budget(plan, smol_shape.weights_bytes)
