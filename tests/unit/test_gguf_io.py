"""GGUF summarizing and dequantization on tiny GGUF files built in the test."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize

from tandem.datadirs import file_sha256
from tandem.errors import ConfigError
from tandem.optimize import gguf_io
from tandem.optimize.gguf_io import dequantize, summarize

Q = GGMLQuantizationType
RNG = np.random.default_rng(1234)

# numpy-order arrays (ne0 last) and the type each is stored as in the fixture
ORIGINALS: dict[str, tuple[np.ndarray[Any, Any], GGMLQuantizationType]] = {
    "blk.0.attn_norm.weight": (RNG.standard_normal(32).astype(np.float32), Q.F32),
    "blk.0.dense.weight": (RNG.standard_normal((4, 64)).astype(np.float32), Q.F32),
    "blk.0.ffn_up.weight": (RNG.standard_normal((8, 64)).astype(np.float32), Q.Q8_0),
    "blk.0.experts.weight": (RNG.standard_normal((2, 3, 64)).astype(np.float32), Q.Q4_0),
    "token_embd.weight": (RNG.standard_normal((4, 32)).astype(np.float32), Q.F16),
}
TOKENS = ["<s>", "</s>", "héllo", "▁wörld", "日本"]


def _write_gguf(
    path: Path,
    tensors: dict[str, tuple[np.ndarray[Any, Any], GGMLQuantizationType]] = ORIGINALS,
    *,
    file_type: int | None = 7,  # MOSTLY_Q8_0
    alignment: int | None = None,
) -> Path:
    writer = GGUFWriter(path, "llama")
    writer.add_name("tiny test model")
    writer.add_uint32("llama.context_length", 128)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_int64("test.big_int", -(2**40))
    writer.add_array("tokenizer.ggml.tokens", TOKENS)
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.5, -2.25, 3.0, 4.5])
    writer.add_key_value(
        "tokenizer.ggml.token_type", [3, 3, 1, 1, 1], GGUFValueType.ARRAY, GGUFValueType.INT32
    )
    writer.add_string(
        "tokenizer.chat_template", "{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    if file_type is not None:
        writer.add_file_type(file_type)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for name, (array, qtype) in tensors.items():
        if qtype in (Q.F32, Q.F16):
            writer.add_tensor(name, quantize(array, qtype))
        else:
            writer.add_tensor(name, quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return _write_gguf(tmp_path / "tiny-q8.gguf")


def _metadata(path: Path) -> dict[str, tuple[list[GGUFValueType], Any]]:
    reader = GGUFReader(path)
    return {
        name: (list(field.types), field.contents())
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }


def _nbytes(qtype: GGMLQuantizationType, n_elements: int) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return n_elements // block * size


def test_summarize_reports_types_shapes_params_and_bpw(src: Path) -> None:
    s = summarize(src)

    assert s.arch == "llama"
    assert s.file_type == "MOSTLY_Q8_0"
    assert s.size_bytes == src.stat().st_size
    assert [t.name for t in s.tensors] == list(ORIGINALS)
    by_name = {t.name: t for t in s.tensors}
    # GGUF order: ne0 (the row length) first, the reverse of numpy's
    assert by_name["blk.0.attn_norm.weight"].shape == (32,)
    assert by_name["blk.0.dense.weight"].shape == (64, 4)
    assert by_name["blk.0.ffn_up.weight"].shape == (64, 8)
    assert by_name["blk.0.experts.weight"].shape == (64, 3, 2)
    assert by_name["blk.0.ffn_up.weight"].ggml_type == "Q8_0"
    assert by_name["blk.0.experts.weight"].ggml_type == "Q4_0"
    assert by_name["blk.0.experts.weight"].n_bytes == 384 // 32 * 18
    expected_params = sum(a.size for a, _ in ORIGINALS.values())
    expected_bytes = sum(_nbytes(q, a.size) for a, q in ORIGINALS.values())
    assert s.n_params == expected_params == 32 + 256 + 512 + 384 + 128
    assert s.bits_per_weight == pytest.approx(8 * expected_bytes / expected_params)
    assert s.type_counts() == {"F32": 2, "Q8_0": 1, "Q4_0": 1, "F16": 1}
    assert s.type_bytes() == {"F32": 128 + 1024, "Q8_0": 544, "Q4_0": 216, "F16": 256}
    assert s.is_quantized

    d = json.loads(json.dumps(s.to_dict()))
    assert d["path"] == str(src)
    assert d["n_params"] == expected_params
    assert d["file_type"] == "MOSTLY_Q8_0"
    assert d["tensors"][3]["shape"] == [64, 3, 2]
    assert d["type_counts"]["Q4_0"] == 1


def test_summarize_without_file_type_and_unquantized(tmp_path: Path) -> None:
    floats = {k: v for k, v in ORIGINALS.items() if v[1] in (Q.F32, Q.F16)}
    s = summarize(_write_gguf(tmp_path / "f.gguf", floats, file_type=None))
    assert s.file_type is None
    assert not s.is_quantized
    assert s.n_params == 32 + 256 + 128


def test_dequantize_f32_matches_gguf_dequantize_and_the_originals(
    src: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sub" / "tiny-f32.gguf"
    summary = dequantize(src, out)

    assert out.is_file()
    assert summary == summarize(out)
    assert summary.file_type == "ALL_F32"
    assert not summary.is_quantized
    assert summary.type_counts() == {"F32": 5}
    assert summary.n_params == summarize(src).n_params
    assert summary.bits_per_weight == pytest.approx(32.0)

    source = {t.name: t for t in GGUFReader(src).tensors}
    result = GGUFReader(out).tensors
    assert [t.name for t in result] == list(ORIGINALS)  # order and names preserved
    for t in result:
        original, qtype = ORIGINALS[t.name]
        assert t.tensor_type == Q.F32
        assert list(t.shape) == list(source[t.name].shape)
        values = np.asarray(t.data)
        assert values.shape == original.shape
        # exactly what gguf-py's dequantizer gives for the stored bytes
        expected = gguf_dequantize(np.asarray(source[t.name].data), qtype)
        np.testing.assert_array_equal(values, expected)
        err = float(np.abs(values - original).max())
        if qtype == Q.F32:
            assert err == 0.0
        elif qtype == Q.F16:
            assert 0.0 < err < 2e-3
        elif qtype == Q.Q8_0:
            assert 0.0 < err < 0.03
        else:  # Q4_0
            assert 0.0 < err < 0.4
            # and much closer than a wrongly laid-out tensor would be
            assert float(np.abs(values - original).mean()) < 0.15


def test_dequantize_copies_all_metadata_and_sets_file_type(src: Path, tmp_path: Path) -> None:
    out = dequantize(src, tmp_path / "out.gguf").path
    before, after = _metadata(src), _metadata(out)

    assert list(after) == list(before)  # same keys, same order
    assert before["general.file_type"][1] == 7
    assert after["general.file_type"] == ([GGUFValueType.UINT32], 0)
    for key in before:
        if key != "general.file_type":
            assert after[key] == before[key], key
    assert after["tokenizer.ggml.tokens"][1] == TOKENS
    assert after["test.big_int"][1] == -(2**40)


def test_dequantize_adds_file_type_when_missing(tmp_path: Path) -> None:
    src = _write_gguf(tmp_path / "noft.gguf", file_type=None)
    out = dequantize(src, tmp_path / "out.gguf", "F16")
    assert out.file_type == "MOSTLY_F16"
    assert _metadata(out.path)["general.file_type"][1] == 1


def test_dequantize_f16_keeps_1d_tensors_f32(src: Path, tmp_path: Path) -> None:
    summary = dequantize(src, tmp_path / "tiny-f16.gguf", out_type="F16")

    assert summary.file_type == "MOSTLY_F16"
    types = {t.name: t.ggml_type for t in summary.tensors}
    assert types == {
        "blk.0.attn_norm.weight": "F32",
        "blk.0.dense.weight": "F16",
        "blk.0.ffn_up.weight": "F16",
        "blk.0.experts.weight": "F16",
        "token_embd.weight": "F16",
    }
    source = {t.name: t for t in GGUFReader(src).tensors}
    for t in GGUFReader(summary.path).tensors:
        _, qtype = ORIGINALS[t.name]
        expected = gguf_dequantize(np.asarray(source[t.name].data), qtype)
        if len(t.shape) >= 2:
            expected = expected.astype(np.float16)
        np.testing.assert_array_equal(np.asarray(t.data), expected)


def test_dequantize_honours_custom_alignment(tmp_path: Path) -> None:
    src = _write_gguf(tmp_path / "aligned.gguf", alignment=64)
    out = dequantize(src, tmp_path / "out.gguf").path
    reader = GGUFReader(out)
    assert reader.alignment == 64
    assert all(t.data_offset % 64 == 0 for t in reader.tensors)
    norm = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight")
    np.testing.assert_array_equal(norm.data, ORIGINALS["blk.0.attn_norm.weight"][0])


def test_errors_on_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        summarize(tmp_path / "nope.gguf")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ConfigError, match="not a readable GGUF"):
        summarize(garbage)
    with pytest.raises(ConfigError, match="not a readable GGUF"):
        dequantize(garbage, tmp_path / "out.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.gguf"]


def test_error_on_truncated_file(src: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size - 100])
    with pytest.raises(ConfigError):
        summarize(truncated)


def test_errors_on_out_equal_to_src_and_bad_out_type(src: Path, tmp_path: Path) -> None:
    before = file_sha256(src)
    with pytest.raises(ConfigError, match="source file"):
        dequantize(src, src)
    with pytest.raises(ConfigError, match="source file"):
        dequantize(src, tmp_path / "x" / ".." / src.name)
    with pytest.raises(ConfigError, match="F32' or 'F16") as exc:
        dequantize(src, tmp_path / "out.gguf", out_type="Q4_0")
    assert exc.value.param == "out_type"
    assert file_sha256(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_error_names_tensor_whose_type_cannot_be_dequantized(tmp_path: Path) -> None:
    block, size = GGML_QUANT_SIZES[Q.Q8_K]
    src = tmp_path / "q8k.gguf"
    writer = GGUFWriter(src, "llama")
    writer.add_tensor("norm", np.ones(4, dtype=np.float32))
    writer.add_tensor("odd.weight", np.zeros((2, size), dtype=np.uint8), raw_dtype=Q.Q8_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert summarize(src).tensors[1].shape == (block, 2)

    with pytest.raises(ConfigError, match=r"'odd\.weight'.*Q8_K"):
        dequantize(src, tmp_path / "out.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q8k.gguf"]


def test_failed_write_leaves_no_temporary_file_and_keeps_old_output(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous result")
    real_convert = gguf_io._convert
    calls = []

    def failing_convert(t: Any, dtype: Any) -> Any:
        calls.append(t.name)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real_convert(t, dtype)

    monkeypatch.setattr(gguf_io, "_convert", failing_convert)
    with pytest.raises(RuntimeError, match="disk full"):
        dequantize(src, out)
    assert len(calls) == 3  # it failed part-way through writing tensor data
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, out.name])


def test_file_sha256_streams_whole_file(tmp_path: Path) -> None:
    data = RNG.integers(0, 256, size=(1 << 20) * 2 + 12345, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(b"")
    assert file_sha256(path) == hashlib.sha256(b"").hexdigest()
