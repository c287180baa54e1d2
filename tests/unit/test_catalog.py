"""Assembling a model published as parts: order, size and checksum are checked."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tandem.catalog import assemble_parts
from tandem.errors import ModelNotFoundError


def _parts(tmp_path: Path, chunks: list[bytes]) -> list[Path]:
    paths = []
    for i, chunk in enumerate(chunks):
        path = tmp_path / f"part{i:02d}.bin"
        path.write_bytes(chunk)
        paths.append(path)
    return paths


def test_parts_are_joined_in_order_and_checked(tmp_path: Path) -> None:
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 7, b"c" * (1 << 23)]  # one part spans reads
    whole = b"".join(chunks)
    target = tmp_path / "out" / "model.gguf"
    got = assemble_parts(_parts(tmp_path, chunks), target, len(whole),
                         hashlib.sha256(whole).hexdigest())
    assert got == target
    assert target.read_bytes() == whole
    assert list(target.parent.iterdir()) == [target]  # no temporary file left


def test_a_damaged_part_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    chunks = [b"GGUF" + b"a" * 100, b"b" * 100]
    good = hashlib.sha256(b"".join(chunks)).hexdigest()
    parts = _parts(tmp_path, [chunks[0], b"x" * 100])  # same size, other bytes
    target = tmp_path / "out" / "model.gguf"
    with pytest.raises(ModelNotFoundError, match="SHA-256"):
        assemble_parts(parts, target, 204, good)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_a_missing_part_is_named_by_size(tmp_path: Path) -> None:
    parts = _parts(tmp_path, [b"GGUF" + b"a" * 100])
    with pytest.raises(ModelNotFoundError, match="reinstall"):
        assemble_parts(parts, tmp_path / "model.gguf", 204, "0" * 64)
    assert not (tmp_path / "model.gguf").exists()


def test_an_assembled_file_of_the_right_size_is_reused(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    target.write_bytes(b"z" * 50)
    # the parts are not even read: nothing else matches them
    assert assemble_parts([tmp_path / "absent.bin"], target, 50, "0" * 64) == target
    assert target.read_bytes() == b"z" * 50


def test_a_truncated_file_is_assembled_again(tmp_path: Path) -> None:
    chunks = [b"GGUF" + b"a" * 100]
    whole = b"".join(chunks)
    target = tmp_path / "model.gguf"
    target.write_bytes(whole[:10])
    assemble_parts(_parts(tmp_path, chunks), target, len(whole), hashlib.sha256(whole).hexdigest())
    assert target.read_bytes() == whole
