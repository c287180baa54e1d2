"""``tandem quantize``: llama.cpp's own quantizer (``llama_model_quantize``), with its plan shown.

The per-tensor decisions (which type each tensor gets, and llama.cpp's fallbacks for tensors
whose width is not a multiple of the k-quant block of 256) are only reported in llama.cpp's log,
so the log is captured and parsed into a ``QuantizePlan``; a dry run uses llama.cpp's own
``dry_run`` and writes nothing.
"""

from __future__ import annotations

import ctypes
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tandem.errors import ConfigError
from tandem.optimize.gguf_io import ModelSummary, summarize

# The --type choices: llama ftypes the pinned llama.cpp implements (its LLAMA_FTYPE_* names).
_FTYPES = {
    "F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16",
    "Q8_0": "MOSTLY_Q8_0", "Q6_K": "MOSTLY_Q6_K",
    "Q5_K_M": "MOSTLY_Q5_K_M", "Q5_K_S": "MOSTLY_Q5_K_S", "Q5_1": "MOSTLY_Q5_1",
    "Q5_0": "MOSTLY_Q5_0",
    "Q4_K_M": "MOSTLY_Q4_K_M", "Q4_K_S": "MOSTLY_Q4_K_S", "Q4_1": "MOSTLY_Q4_1",
    "Q4_0": "MOSTLY_Q4_0", "IQ4_NL": "MOSTLY_IQ4_NL", "IQ4_XS": "MOSTLY_IQ4_XS",
    "Q3_K_L": "MOSTLY_Q3_K_L", "Q3_K_M": "MOSTLY_Q3_K_M", "Q3_K_S": "MOSTLY_Q3_K_S",
    "IQ3_M": "MOSTLY_IQ3_M", "IQ3_S": "MOSTLY_IQ3_S", "IQ3_XS": "MOSTLY_IQ3_XS",
    "IQ3_XXS": "MOSTLY_IQ3_XXS",
    "Q2_K": "MOSTLY_Q2_K", "Q2_K_S": "MOSTLY_Q2_K_S",
    "IQ2_M": "MOSTLY_IQ2_M", "IQ2_S": "MOSTLY_IQ2_S", "IQ2_XS": "MOSTLY_IQ2_XS",
    "IQ2_XXS": "MOSTLY_IQ2_XXS", "IQ1_M": "MOSTLY_IQ1_M", "IQ1_S": "MOSTLY_IQ1_S",
    "TQ2_0": "MOSTLY_TQ2_0", "TQ1_0": "MOSTLY_TQ1_0",
}
# Types that llama.cpp refuses to produce without an importance matrix.
NEEDS_IMATRIX = {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"}
# Aliases llama-quantize accepts.
_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

_DRY_ROW = re.compile(
    r"^\[\s*\d+/\s*\d+\]\s+(?P<name>\S+)\s+- \[(?P<shape>[^\]]+)\], type =\s+(?P<src>\w+), "
    r"size =\s+(?P<src_mib>[\d.]+) MiB(?: ->\s+(?P<dst_mib>[\d.]+) MiB \((?P<dst>\w+)\))?"
)
_RUN_ROW = re.compile(
    r"^\[\s*\d+/\s*\d+\]\s+(?P<name>\S+)\s+- \[(?P<shape>[^\]]+)\], type =\s+(?P<src>\w+), "
    r"(?:converting to (?P<dst>\w+) \.\. )?size =\s+(?P<src_mib>[\d.]+) MiB"
    r"(?: ->\s+(?P<dst_mib>[\d.]+) MiB)?"
)
_FALLBACK = re.compile(r"^warning: (?P<name>\S+)\s+- .*-> falling back to\s+(?P<dst>\w+)")
_SIZE = re.compile(r"(model|quant) size\s+=\s+([\d.]+) MiB \(([\d.]+) BPW\)")


def quant_types() -> list[str]:
    """The ``--type`` names this llama.cpp build supports."""
    import llama_cpp

    return [name for name, ftype in _FTYPES.items() if hasattr(llama_cpp, f"LLAMA_FTYPE_{ftype}")]


def tensor_types() -> list[str]:
    """ggml tensor type names for ``--embd-type``/``--output-type``/``--tensor-type``."""
    import llama_cpp

    skip = {"COUNT", "I8", "I16", "I32", "I64", "F64", "Q8_1", "Q8_K"}
    return [n.removeprefix("GGML_TYPE_") for n in dir(llama_cpp)
            if n.startswith("GGML_TYPE_") and n.removeprefix("GGML_TYPE_") not in skip]


def _ftype(name: str) -> int:
    import llama_cpp

    key = _ALIASES.get(name.upper(), name.upper())
    if key not in _FTYPES or not hasattr(llama_cpp, f"LLAMA_FTYPE_{_FTYPES[key]}"):
        raise ConfigError(
            f"Unknown quantization type {name!r}; choose one of {', '.join(quant_types())}.",
            param="type",
        )
    return int(getattr(llama_cpp, f"LLAMA_FTYPE_{_FTYPES[key]}"))


def _ggml_type(name: str, param: str) -> int:
    import llama_cpp

    value = getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", None)
    if value is None or name.upper() not in tensor_types():
        raise ConfigError(
            f"Unknown tensor type {name!r} for {param}; choose one of "
            f"{', '.join(tensor_types())}.",
            param=param,
        )
    return int(value)


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    src_type: str
    dst_type: str
    src_mib: float
    dst_mib: float
    fallback: bool


@dataclass
class QuantizePlan:
    """What llama.cpp did (or, in a dry run, would do) to each tensor."""

    src: str
    out: str | None
    type: str
    tensors: list[TensorPlan] = field(default_factory=list)
    src_mib: float = 0.0
    dst_mib: float = 0.0
    src_bpw: float = 0.0
    dst_bpw: float = 0.0
    requantized_from: str | None = None  # the source was already quantized (in this type)
    imatrix: str | None = None
    dry_run: bool = False
    written: dict[str, Any] | None = None  # the summary of the file written

    @property
    def n_fallback(self) -> int:
        return sum(t.fallback for t in self.tensors)

    def dst_type_counts(self) -> dict[str, int]:
        return dict(Counter(t.dst_type for t in self.tensors))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_fallback"] = self.n_fallback
        d["dst_type_counts"] = self.dst_type_counts()
        return d


def parse_log(lines: Sequence[str], plan: QuantizePlan) -> None:
    """Fill ``plan`` from llama.cpp's quantization log (dry-run and real-run formats)."""
    fallbacks = {}
    for line in lines:
        m = _FALLBACK.match(line)
        if m:
            fallbacks[m["name"]] = m["dst"].upper()
    for line in lines:
        m = _DRY_ROW.match(line) if plan.dry_run else _RUN_ROW.match(line)
        if m:
            src = m["src"].upper()
            dst = (m["dst"] or m["src"]).upper()
            src_mib = float(m["src_mib"])
            plan.tensors.append(TensorPlan(
                name=m["name"],
                shape=_shape(m["shape"]),
                src_type=src,
                dst_type=dst,
                src_mib=src_mib,
                dst_mib=float(m["dst_mib"]) if m["dst_mib"] else src_mib,
                fallback=m["name"] in fallbacks,
            ))
            continue
        s = _SIZE.search(line)
        if s:
            if s[1] == "model":
                plan.src_mib, plan.src_bpw = float(s[2]), float(s[3])
            else:
                plan.dst_mib, plan.dst_bpw = float(s[2]), float(s[3])


def _shape(text: str) -> tuple[int, ...]:
    """llama.cpp prints four dims padded with 1s: keep the meaningful ones."""
    dims = [int(x) for x in text.split(",")]
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


@contextmanager
def _captured_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines (joined across partial writes) while quantizing."""
    import llama_cpp
    from llama_cpp import _logger

    parts: list[str] = []

    def collect(level: int, text: bytes, user_data: Any) -> None:
        parts.append(text.decode("utf-8", errors="replace"))

    callback = llama_cpp.llama_log_callback(collect)
    llama_cpp.llama_log_set(callback, None)
    lines: list[str] = []
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, None)
        lines.extend("".join(parts).splitlines())


def _provenance(path: Path, imatrix: Any) -> Any:
    """``quantize.imatrix.*`` keys recording which importance matrix was used (as
    llama-quantize writes them), as a terminated array of llama.cpp key/value overrides."""
    import llama_cpp

    values: list[tuple[str, int | str]] = [
        ("quantize.imatrix.file", path.name[:127]),
        ("quantize.imatrix.dataset", ",".join(imatrix.datasets)[:127] or "unknown"),
        ("quantize.imatrix.entries_count", len(imatrix.sums)),
        ("quantize.imatrix.chunks_count", imatrix.chunk_count),
    ]
    arr = (llama_cpp.llama_model_kv_override * (len(values) + 1))()
    for i, (key, value) in enumerate(values):
        entry: Any = arr[i]  # llama-cpp-python's stub types the union member loosely
        entry.key = key.encode()
        if isinstance(value, int):
            entry.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            entry.value.val_i64 = value
        else:
            entry.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            entry.value.val_str = value.encode()[:127]
    arr[len(values)].key = b""
    return arr


def _imatrix_array(path: Path) -> tuple[Any, list[Any]]:
    """The C array of importance data (NULL-terminated), the buffers it points into, and the
    provenance overrides."""
    import llama_cpp

    from tandem.optimize.imatrix import Imatrix

    loaded = Imatrix.load(path)
    means = loaded.means()
    keep: list[Any] = []
    arr = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
    for i, (name, values) in enumerate(sorted(means.items())):
        data: npt.NDArray[np.float32] = np.ascontiguousarray(values, np.float32)
        encoded = name.encode()
        keep += [data, encoded]
        arr[i].name = encoded
        arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = data.size
    arr[len(means)].name = None
    provenance = _provenance(path, loaded)
    keep.append(provenance)
    return arr, keep


def quantize(
    src: Path,
    out: Path | None,
    qtype: str,
    *,
    embd_type: str | None = None,
    output_type: str | None = None,
    tensor_types: Sequence[tuple[str, str]] = (),
    imatrix: Path | None = None,
    dry_run: bool = False,
    pure: bool = False,
    n_threads: int | None = None,
) -> QuantizePlan:
    """Quantize ``src`` into ``out`` (written atomically) and report the per-tensor plan."""
    import llama_cpp

    if not src.is_file():
        raise ConfigError(f"No model file at {src}.", param="src")
    source = summarize(src)
    name = _ALIASES.get(qtype.upper(), qtype.upper())
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _ftype(name)
    params.nthread = n_threads or os.cpu_count() or 1
    params.allow_requantize = True
    params.dry_run = dry_run
    params.pure = pure
    if embd_type:
        params.token_embedding_type = _ggml_type(embd_type, "embd_type")
    if output_type:
        params.output_tensor_type = _ggml_type(output_type, "output_type")
    keep: list[Any] = []
    if tensor_types:
        overrides = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (pattern, ttype) in enumerate(tensor_types):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"Bad tensor pattern {pattern!r}: {exc}") from exc
            encoded = pattern.encode()
            keep.append(encoded)
            overrides[i].pattern = encoded
            overrides[i].type = _ggml_type(ttype, "tensor_type")
        overrides[len(tensor_types)].pattern = None
        params.tt_overrides = overrides
        keep.append(overrides)
    if imatrix is not None:
        arr, buffers = _imatrix_array(imatrix)
        params.imatrix = arr
        params.kv_overrides = buffers[-1]
        keep += [arr, buffers]
    elif name in NEEDS_IMATRIX:
        raise ConfigError(f"{name} needs an importance matrix: pass --imatrix FILE "
                          "(make one with `tandem imatrix`).", param="imatrix")
    plan = QuantizePlan(
        src=str(src), out=None if out is None else str(out), type=name,
        requantized_from=_quantized_type(source), imatrix=None if imatrix is None else str(imatrix),
        dry_run=dry_run,
    )
    if dry_run:
        with _captured_log() as lines:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), b"", ctypes.byref(params))
        _check(rc, lines, src)
        parse_log(lines, plan)
        return plan
    if out is None:
        raise ConfigError("Give an output path (or --dry-run).", param="out")
    if out.resolve() == src.resolve():
        raise ConfigError("The output path is the source model: choose another path.", param="out")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _captured_log() as lines:
            rc = llama_cpp.llama_model_quantize(
                str(src).encode(), str(tmp).encode(), ctypes.byref(params)
            )
        _check(rc, lines, src)
        parse_log(lines, plan)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    plan.written = summarize(out).to_dict()
    return plan


def _quantized_type(summary: ModelSummary) -> str | None:
    """The dominant quantized type of an already-quantized source, else None."""
    if not summary.is_quantized:
        return None
    counts = {t: n for t, n in summary.type_counts().items() if t not in {"F32", "F16", "BF16"}}
    return max(counts, key=lambda t: counts[t])


def _check(rc: int, lines: Sequence[str], src: Path) -> None:
    if rc != 0:
        tail = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()][-3:]
        detail = "; ".join(ln.strip() for ln in tail) or "see llama.cpp's log"
        raise ConfigError(f"llama.cpp could not quantize {src}: {detail}")
