"""The optimization commands refuse bad input with one line that says what to fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter
from typer.testing import CliRunner

from tandem.cli import app


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    writer = GGUFWriter(str(path), arch="llama")
    writer.add_tensor("blk.0.attn_q.weight", np.ones((32, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_unknown_type_lists_the_choices(tiny: Path, tmp_path: Path) -> None:
    code, out = _run("quantize", str(tiny), str(tmp_path / "o.gguf"), "--type", "Q9_9")
    assert code == 1
    assert "Unknown quantization type" in out and "Q4_K_M" in out
    assert not (tmp_path / "o.gguf").exists()


def test_tensor_override_needs_pattern_and_type(tiny: Path, tmp_path: Path) -> None:
    code, out = _run("quantize", str(tiny), str(tmp_path / "o.gguf"), "--tensor-type", "ffn_down")
    assert code == 1 and "PATTERN=TYPE" in out
    code, out = _run("quantize", str(tiny), str(tmp_path / "o.gguf"), "--tensor-type",
                     "ffn_down=q9_K")
    assert code == 1 and "Unknown tensor type" in out


def test_low_bit_types_ask_for_an_imatrix(tiny: Path, tmp_path: Path) -> None:
    code, out = _run("quantize", str(tiny), str(tmp_path / "o.gguf"), "--type", "IQ2_XXS")
    assert code == 1 and "--imatrix" in out


def test_quantize_into_the_source_is_refused(tiny: Path) -> None:
    code, out = _run("quantize", str(tiny), str(tiny), "--type", "Q8_0")
    assert code == 1 and "source model" in out
    assert tiny.stat().st_size > 0


def test_imatrix_refuses_the_test_text(tiny: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    test_text = data / "wikitext2_test.raw"
    test_text.write_text("some text")
    code, out = _run("imatrix", str(tiny), str(tmp_path / "im.gguf"), "--text", str(test_text),
                     "--data-dir", str(data))
    assert code == 1 and "perplexity test text" in out
    assert not (tmp_path / "im.gguf").exists()


def test_evaluate_reports_missing_data_and_bad_tasks(tiny: Path, tmp_path: Path) -> None:
    code, out = _run("evaluate", str(tiny), "--tasks", "ppl,mmlu", "--data-dir", str(tmp_path))
    assert code == 1 and "Unknown task" in out
    code, out = _run("evaluate", str(tiny), "--tasks", "arc_easy", "--data-dir", str(tmp_path))
    assert code == 1 and "--data-dir" in out


def test_frontier_needs_variants(tmp_path: Path) -> None:
    code, out = _run("frontier", str(tmp_path), "--tasks", "perf")
    assert code == 1 and "No .gguf files" in out
