"""Reading a GGUF file's header: metadata and tensor sizes, without touching the weights.

``gguf.GGUFReader`` builds a numpy view for every element of every metadata array; on a model
with a 262k-token vocabulary that takes seconds. The walk below decodes only scalars and short
arrays and skips long arrays by length, so planning stays cheap enough to run before every load.
Types and block sizes still come from the ``gguf`` package.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path

import gguf

_SCALAR_FORMATS = {
    gguf.GGUFValueType.UINT8: "<B",
    gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I",
    gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f",
    gguf.GGUFValueType.BOOL: "<?",
    gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d",
}

HeaderValue = int | float | bool | str | tuple[int | float | bool | str | None, ...]


class _HeaderCursor:
    """Reads little-endian GGUF values from a memory map, advancing an offset."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str) -> int | float | bool:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value  # type: ignore[no-any-return]

    def string(self) -> str:
        length = int(self.unpack("<Q"))
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> HeaderValue:
        if vtype == gguf.GGUFValueType.STRING:
            return self.string()
        if vtype == gguf.GGUFValueType.ARRAY:
            return self.array()
        return self.unpack(_SCALAR_FORMATS[gguf.GGUFValueType(vtype)])

    def array(self) -> tuple[int | float | bool | str | None, ...]:
        """An array; only its length is kept (elements are ``None``) unless it is short."""
        etype, count = int(self.unpack("<I")), int(self.unpack("<Q"))
        if count <= 1024:  # short arrays (per-layer head counts) are worth decoding
            return tuple(self.value(etype) for _ in range(count))  # type: ignore[misc]
        if etype == gguf.GGUFValueType.STRING:
            for _ in range(count):
                length = int(self.unpack("<Q"))
                self.pos += length
        elif etype == gguf.GGUFValueType.ARRAY:
            for _ in range(count):
                self.array()
        else:
            self.pos += count * struct.calcsize(_SCALAR_FORMATS[gguf.GGUFValueType(etype)])
        return (None,) * count


def _tensor_bytes(dims: list[int], ggml_type: int) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    return math.prod(dims) // block * type_size


def read_header(path: Path) -> tuple[dict[str, HeaderValue], dict[str, tuple[list[int], int]]]:
    """(metadata, {tensor name: (dims, data bytes)}) from a GGUF file's header."""
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _HeaderCursor(buf)
        if cur.unpack("<I") != gguf.GGUF_MAGIC:
            raise ValueError("not a GGUF file (bad magic)")
        if cur.unpack("<I") not in (2, 3):
            raise ValueError("unsupported GGUF version (or a big-endian file)")
        n_tensors, n_kv = int(cur.unpack("<Q")), int(cur.unpack("<Q"))
        meta: dict[str, HeaderValue] = {}
        for _ in range(n_kv):
            key = cur.string()
            meta[key] = cur.value(int(cur.unpack("<I")))
        tensors: dict[str, tuple[list[int], int]] = {}
        for _ in range(n_tensors):
            name = cur.string()
            dims = [int(cur.unpack("<Q")) for _ in range(int(cur.unpack("<I")))]
            ggml_type = int(cur.unpack("<I"))
            cur.pos += 8  # data offset
            tensors[name] = (dims, _tensor_bytes(dims, ggml_type))
    return meta, tensors
