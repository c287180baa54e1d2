"""Reading, summarizing and dequantizing GGUF model files (via gguf-py).

``summarize`` reads only the header (tensor data stays memory-mapped and untouched);
``dequantize`` rewrites a model with every tensor in F32 (or F16 for 2-D+ tensors), copying all
metadata, so the result can be re-quantized or used as a full-precision reference.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGMLQuantizationType,
    GGUFReader,
    GGUFValueType,
    GGUFWriter,
    Keys,
    LlamaFileType,
)
from gguf.gguf_reader import ReaderField, ReaderTensor
from gguf.quants import dequantize as gguf_dequantize

from tandem.errors import ConfigError

log = logging.getLogger(__name__)

_PLAIN_FLOATS = frozenset({"F32", "F16", "F64"})  # the reader exposes these as typed arrays
_UNQUANTIZED = frozenset({"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"})
_INT_TYPES = frozenset(
    {
        GGMLQuantizationType.I8,
        GGMLQuantizationType.I16,
        GGMLQuantizationType.I32,
        GGMLQuantizationType.I64,
    }
)
_OUT_FTYPES = {"F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file, as listed in its header."""

    name: str
    ggml_type: str  # e.g. "Q4_1", "F32"
    shape: tuple[int, ...]  # GGUF order: ne0 (the contiguous row length) first
    n_elements: int
    n_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ggml_type": self.ggml_type,
            "shape": list(self.shape),
            "n_elements": self.n_elements,
            "n_bytes": self.n_bytes,
        }


@dataclass(frozen=True)
class ModelSummary:
    """What a GGUF file holds: architecture, file type, tensors and their storage cost."""

    path: Path
    size_bytes: int
    arch: str | None
    file_type: str | None  # llama ftype name, e.g. "MOSTLY_Q4_1"; None when the key is absent
    n_params: int
    tensors: tuple[TensorInfo, ...]

    @property
    def bits_per_weight(self) -> float:
        """Tensor storage bits per parameter (headers and metadata excluded)."""
        if self.n_params == 0:
            return 0.0
        return 8 * sum(t.n_bytes for t in self.tensors) / self.n_params

    def type_counts(self) -> dict[str, int]:
        """Number of tensors per ggml type."""
        return dict(Counter(t.ggml_type for t in self.tensors))

    def type_bytes(self) -> dict[str, int]:
        """Bytes of tensor data per ggml type."""
        sizes: dict[str, int] = {}
        for t in self.tensors:
            sizes[t.ggml_type] = sizes.get(t.ggml_type, 0) + t.n_bytes
        return sizes

    @property
    def is_quantized(self) -> bool:
        """Whether any 2-D+ tensor is stored in a quantized type (not float or integer)."""
        return any(len(t.shape) >= 2 and t.ggml_type not in _UNQUANTIZED for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "arch": self.arch,
            "file_type": self.file_type,
            "n_params": self.n_params,
            "bits_per_weight": self.bits_per_weight,
            "is_quantized": self.is_quantized,
            "type_counts": self.type_counts(),
            "type_bytes": self.type_bytes(),
            "tensors": [t.to_dict() for t in self.tensors],
        }


def _open_reader(path: Path) -> GGUFReader:
    """A GGUFReader on ``path``, or a ConfigError that says what is wrong with the file."""
    if not path.is_file():
        raise ConfigError(f"GGUF file {path} does not exist; check the model path")
    try:
        return GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OSError) as exc:
        raise ConfigError(
            f"{path} is not a readable GGUF file ({exc}); point to a valid .gguf model"
        ) from exc


def _field_value(reader: GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    return field.contents() if field is not None else None


def _summary(path: Path, reader: GGUFReader) -> ModelSummary:
    tensors = tuple(
        TensorInfo(
            name=t.name,
            ggml_type=t.tensor_type.name,
            shape=tuple(int(d) for d in t.shape),
            n_elements=int(t.n_elements),
            n_bytes=int(t.n_bytes),
        )
        for t in reader.tensors
    )
    ftype_value = _field_value(reader, Keys.General.FILE_TYPE)
    file_type: str | None = None
    if ftype_value is not None:
        try:
            file_type = LlamaFileType(int(ftype_value)).name
        except ValueError:
            file_type = f"UNKNOWN_{ftype_value}"
    arch = _field_value(reader, Keys.General.ARCHITECTURE)
    return ModelSummary(
        path=path,
        size_bytes=path.stat().st_size,
        arch=str(arch) if arch is not None else None,
        file_type=file_type,
        n_params=sum(t.n_elements for t in tensors),
        tensors=tensors,
    )


def summarize(path: Path) -> ModelSummary:
    """Summarize a GGUF file from its header alone (tensor data is not read)."""
    path = Path(path)
    return _summary(path, _open_reader(path))


def _copy_value(field: ReaderField) -> tuple[Any, GGUFValueType, GGUFValueType | None]:
    """A metadata field's value, type and array sub-type, ready for ``add_key_value``.

    Strings are copied as raw bytes so that a value is reproduced byte for byte.
    """
    vtype = field.types[0]
    if vtype == GGUFValueType.STRING:
        return bytes(field.parts[-1].tobytes()), vtype, None
    if vtype != GGUFValueType.ARRAY:
        return field.contents(), vtype, None
    if len(field.types) > 2 or field.types[-1] == GGUFValueType.ARRAY:
        raise ConfigError(
            f"metadata key {field.name!r} is a nested array, which cannot be copied; "
            "remove it from the source model"
        )
    sub_type = field.types[-1] if len(field.types) > 1 else None
    if sub_type == GGUFValueType.STRING:
        return [bytes(field.parts[i].tobytes()) for i in field.data], vtype, sub_type
    return field.contents(), vtype, sub_type


def _copy_metadata(reader: GGUFReader, writer: GGUFWriter, file_type: int,
                   overrides: dict[str, tuple[Any, GGUFValueType]] | None = None) -> None:
    """Copy every key/value except the virtual ``GGUF.*`` ones and those the writer writes.

    ``overrides`` replaces (or adds) keys: ``{key: (value, type)}``.
    """
    wrote_ftype = False
    pending = dict(overrides or {})
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == Keys.General.ARCHITECTURE:
            continue
        if field.name == Keys.General.FILE_TYPE:
            writer.add_key_value(field.name, file_type, GGUFValueType.UINT32)
            wrote_ftype = True
            continue
        if field.name in pending:
            value, vtype = pending.pop(field.name)
            writer.add_key_value(field.name, value, vtype)
            continue
        value, vtype, sub_type = _copy_value(field)
        if vtype == GGUFValueType.ARRAY and len(value) == 0:
            # GGUFWriter refuses empty arrays; an empty array carries no information.
            log.warning("skipping empty metadata array %s", field.name)
            continue
        writer.add_key_value(field.name, value, vtype, sub_type=sub_type)
    for key, (value, vtype) in pending.items():
        writer.add_key_value(key, value, vtype)
    if not wrote_ftype:
        writer.add_key_value(Keys.General.FILE_TYPE, file_type, GGUFValueType.UINT32)


def _is_quantized_type(qtype: GGMLQuantizationType) -> bool:
    return qtype.name not in _UNQUANTIZED


def _check_dequantizable(reader: GGUFReader) -> None:
    """Fail before writing anything if some tensor's type has no numpy dequantizer."""
    probed: dict[GGMLQuantizationType, bool] = {}
    for t in reader.tensors:
        qtype = t.tensor_type
        if qtype in _INT_TYPES or qtype.name in _PLAIN_FLOATS:
            continue
        if qtype not in probed:
            _, type_size = GGML_QUANT_SIZES[qtype]
            try:
                gguf_dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
                probed[qtype] = True
            except NotImplementedError:
                probed[qtype] = False
        if not probed[qtype]:
            raise ConfigError(
                f"tensor {t.name!r} is stored as {qtype.name}, which gguf-py cannot dequantize; "
                "start from a model in another quantization type"
            )
        if reader.byte_order == "S" and _is_quantized_type(qtype):
            raise ConfigError(
                f"tensor {t.name!r} ({qtype.name}) is in a byte-swapped file; quantized data "
                "can only be dequantized from a little-endian GGUF"
            )


def _out_dtype(t: ReaderTensor, out_type: str) -> tuple[GGMLQuantizationType, np.dtype[Any]]:
    """The ggml type and numpy dtype a tensor is written as."""
    if t.tensor_type in _INT_TYPES:
        return t.tensor_type, t.data.dtype.newbyteorder("=")
    if out_type == "F16" and len(t.shape) >= 2:
        return GGMLQuantizationType.F16, np.dtype(np.float16)
    return GGMLQuantizationType.F32, np.dtype(np.float32)


def _convert(t: ReaderTensor, dtype: np.dtype[Any]) -> np.ndarray[Any, np.dtype[Any]]:
    """The tensor's values as a native-endian array of ``dtype`` in numpy order (ne0 last)."""
    np_shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    qtype = t.tensor_type
    if qtype in _INT_TYPES or qtype.name in _PLAIN_FLOATS:
        values = np.asarray(t.data, dtype=dtype)
    else:
        values = gguf_dequantize(t.data, qtype).astype(dtype, copy=False)
    if values.shape != np_shape:
        raise ConfigError(
            f"tensor {t.name!r} ({qtype.name}) dequantized to shape {values.shape}, expected "
            f"{np_shape}; the source file may be corrupt"
        )
    return np.ascontiguousarray(values)


def dequantize(src: Path, out: Path, out_type: str = "F32") -> ModelSummary:
    """Write ``src`` to ``out`` with every tensor dequantized, and summarize the result.

    ``out_type`` "F32" writes all float tensors as F32 (``general.file_type`` = ALL_F32); "F16"
    writes 2-D+ tensors as F16 and keeps 1-D ones (norms, biases) F32, as llama.cpp does
    (MOSTLY_F16). Integer tensors are copied unchanged. All metadata is copied. The file is
    written next to ``out`` under a temporary name and renamed into place only when complete.
    """
    src, out = Path(src), Path(out)
    out_type = out_type.upper()
    if out_type not in _OUT_FTYPES:
        raise ConfigError(f"out_type must be 'F32' or 'F16', not {out_type!r}", param="out_type")
    if out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src)):
        raise ConfigError(f"output {out} is the source file; choose a different output path")
    reader = _open_reader(src)
    _check_dequantizable(reader)
    plan = [(t, *_out_dtype(t, out_type)) for t in reader.tensors]
    infos = [
        (t.name, tuple(int(d) for d in reversed(t.shape.tolist())), dtype,
         int(t.n_elements) * dtype.itemsize, qtype)
        for t, qtype, dtype in plan
    ]
    # One converted tensor in memory at a time.
    data = (_convert(t, dtype) for t, _, dtype in plan)
    _write(reader, out, int(_OUT_FTYPES[out_type]), None, infos, data)
    return summarize(out)


def _write(
    reader: GGUFReader,
    out: Path,
    file_type: int,
    overrides: dict[str, tuple[Any, GGUFValueType]] | None,
    infos: list[tuple[str, tuple[int, ...], np.dtype[Any], int, GGMLQuantizationType]],
    data: Any,
) -> None:
    """Write a GGUF with ``reader``'s metadata and the given tensors, atomically: under a
    temporary name next to ``out`` (created by the writer, so with the usual permissions),
    renamed into place only when complete, removed on any failure."""
    arch = _field_value(reader, Keys.General.ARCHITECTURE)
    arch_name = str(arch) if arch is not None else ""  # no arch key: the writer adds none
    writer = GGUFWriter(None, arch=arch_name, endianess=reader.endianess)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        alignment = _field_value(reader, Keys.General.ALIGNMENT)
        if alignment is not None:
            writer.data_alignment = int(alignment)
        _copy_metadata(reader, writer, file_type, overrides)
        for name, shape, dtype, nbytes, qtype in infos:
            writer.add_tensor_info(name, shape, dtype, nbytes, raw_dtype=qtype)
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for array in data:
            writer.write_tensor_data(array)
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_f32_like(
    src: Path,
    out: Path,
    tensors: dict[str, np.ndarray[Any, np.dtype[Any]]],
    overrides: dict[str, tuple[Any, GGUFValueType]] | None = None,
) -> ModelSummary:
    """Write ``tensors`` (numpy order, any float dtype → F32) with ``src``'s metadata.

    For model surgery and export: the tokenizer, chat template and every other key come from
    ``src``; ``overrides`` changes the shape keys (block count, widths). Written atomically.
    """
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise ConfigError(f"output {out} is the source file; choose a different output path")
    reader = _open_reader(src)
    arrays = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in tensors.items()}
    f32 = np.dtype(np.float32)
    infos = [(n, a.shape, f32, a.nbytes, GGMLQuantizationType.F32) for n, a in arrays.items()]
    _write(reader, out, int(LlamaFileType.ALL_F32), overrides, infos, arrays.values())
    return summarize(out)
