"""How much RAM a local model will take, planned from its GGUF header before loading it.

A plan is the sum of four parts: the weights (memory-mapped from the file, all touched on the
first token), the KV cache (allocated and zeroed by llama.cpp at load), the compute buffer used
while evaluating a batch, and a runtime overhead. It predicts how much a load adds to the
resident set size (RSS) of a process that has already imported llama_cpp, at the peak: after the
whole context has been filled. The formulas are calibrated against llama-cpp-python 0.3.36 on
CPU; see ``_compute_bytes`` and the constants above it for what was measured.

Mapped weights are clean file pages the kernel could drop under pressure (and reread, slowly);
the plan counts them in full, as RSS does.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import get_args

import gguf

from tandem.errors import MemoryBudgetError, ModelLoadError
from tandem.local.gguf_header import HeaderValue, read_header
from tandem.settings import KvType

KV_TYPES: tuple[KvType, ...] = get_args(KvType)  # largest cache first
_KV_GGML_TYPES: dict[str, gguf.GGMLQuantizationType] = {
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}
# llama.cpp sizes the KV cache in whole blocks of 256 cells.
_CTX_STEP = 256
_MIB = 1024 * 1024


@dataclass(frozen=True)
class ModelShape:
    """The hyper-parameters a memory plan needs, read from GGUF metadata."""

    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_ctx_train: int
    weights_bytes: int  # sum of the tensor data sizes in the file
    # Window of the sliding-window attention layers (gemma3). Informational only: llama.cpp
    # gives SWA layers a full-size cache unless ``swa_full=False`` is passed, which
    # llama-cpp-python does not do by default, so the plan counts n_ctx cells on every layer.
    sliding_window: int | None


def _int_key(meta: dict[str, HeaderValue], key: str, default: int | None = None) -> int:
    value = meta.get(key)
    if isinstance(value, tuple):  # per-layer values: plan for the largest layer
        value = max((v for v in value if isinstance(v, int)), default=None)
    if isinstance(value, int):
        return value
    if default is not None:
        return default
    raise ModelLoadError(f"The GGUF metadata has no integer {key!r}; is the file complete?")


def read_shape(path: Path) -> ModelShape:
    """The model's hyper-parameters and weight size, read from the GGUF header only."""
    try:
        meta, tensors = read_header(path)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise ModelLoadError(f"Cannot read GGUF metadata from {path}: {exc}") from exc
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelLoadError(f"{path} has no general.architecture; is it a GGUF model file?")
    n_embd = _int_key(meta, f"{arch}.embedding_length")
    n_head = _int_key(meta, f"{arch}.attention.head_count")
    window = meta.get(f"{arch}.attention.sliding_window")
    return ModelShape(
        arch=arch,
        n_layer=_int_key(meta, f"{arch}.block_count"),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=_int_key(meta, f"{arch}.attention.head_count_kv", n_head),
        head_dim_k=_int_key(meta, f"{arch}.attention.key_length", n_embd // n_head),
        head_dim_v=_int_key(meta, f"{arch}.attention.value_length", n_embd // n_head),
        n_vocab=_vocab_size(meta, tensors),
        n_ctx_train=_int_key(meta, f"{arch}.context_length"),
        weights_bytes=sum(size for _, size in tensors.values()),
        sliding_window=window if isinstance(window, int) and window > 0 else None,
    )


def _vocab_size(meta: dict[str, HeaderValue], tensors: dict[str, tuple[list[int], int]]) -> int:
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, tuple):
        return len(tokens)
    if "token_embd.weight" in tensors:
        return tensors["token_embd.weight"][0][1]  # dims are [n_embd, n_vocab]
    raise ModelLoadError("The GGUF file has neither a token list nor a token_embd tensor.")


# --- The plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes a model will add to the process's resident set once loaded and in use."""

    model_path: Path
    n_ctx: int
    kv_type: KvType
    n_batch: int
    flash_attn: bool
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    overhead_bytes: int
    n_seq: int = 1  # sequences sharing the KV cache, each with an n_ctx window

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes + self.overhead_bytes

    def fits(self, budget_bytes: int) -> bool:
        """Whether the whole plan fits in ``budget_bytes``."""
        return self.total_bytes <= budget_bytes

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view, with the total and MiB figures for people reading it."""
        data: dict[str, object] = asdict(self)
        data["model_path"] = str(self.model_path)
        data["total_bytes"] = self.total_bytes
        data["total_mib"] = round(self.total_bytes / _MIB, 1)
        return data


def ggml_kv_type(kv_type: KvType) -> int:
    """The ggml type id llama.cpp takes as ``type_k``/``type_v`` for a KV cache type name."""
    return int(_KV_GGML_TYPES[_checked_kv_type(kv_type)])


def needs_flash_attn(kv_type: KvType) -> bool:
    """Whether llama.cpp requires flash attention for this KV type (a quantized V cache does)."""
    return _checked_kv_type(kv_type) != "f16"


def _checked_kv_type(kv_type: str) -> str:
    if kv_type not in _KV_GGML_TYPES:
        raise ValueError(f"Unknown KV cache type {kv_type!r}; choose one of {', '.join(KV_TYPES)}.")
    return kv_type


def _kv_bytes_per_element(kv_type: KvType) -> float:
    block, type_size = gguf.GGML_QUANT_SIZES[_KV_GGML_TYPES[_checked_kv_type(kv_type)]]
    return type_size / block


# Calibration against llama-cpp-python 0.3.36 on x86-64 Linux (SmolLM2-135M Q4_1 and
# gemma3-270M Q4_K_M, n_ctx 512-8192, every KV type): RSS right after loading exceeded
# weights + KV cache by 21.7 MiB and 60.6 MiB, whatever n_ctx and KV type. The difference
# between the models tracks the vocabulary (llama.cpp's token tables, the sampler's candidate
# array and the logits row): ~192 bytes per token over a fixed ~13 MiB.
_RUNTIME_FIXED_BYTES = 13 * _MIB
_RUNTIME_BYTES_PER_TOKEN = 192
# Activation floats per micro-batch token, in units of n_embd (hidden state, Q/K/V, FFN); the
# two calibration models needed 14 and 20, so 17 keeps both within a few MiB.
_ACTIVATION_FACTOR = 17
# Without flash attention the CPU keeps each head's scores as f32 and the K·Q → V matmul
# converts them to an f16 copy in its work buffer: 4 + 2 bytes per score.
_SCORE_BYTES = 6
# llama-cpp-python runs micro-batches of at most 512 tokens (its ``n_ubatch`` default).
_MAX_UBATCH = 512


def _compute_bytes(shape: ModelShape, n_ctx: int, n_batch: int, flash_attn: bool) -> int:
    """Resident compute-buffer bytes at the peak: a full micro-batch against a full cache.

    llama.cpp reserves its compute buffer for the worst-case graph, including logits for every
    token of a batch (n_vocab × n_batch floats: 512 MiB for gemma3), but a page only becomes
    resident when a real graph writes it, and with one output row per batch (no
    ``logits_all``) the logits never go past one row; llama-cpp-python's own ``scores`` array
    (n_batch × n_vocab floats) likewise stays unwritten. What does get written, per
    micro-batch token:

    * without flash attention, the attention scores of every head against every cache cell
      (n_ctx × n_head × 6 bytes, see ``_SCORE_BYTES``); flash attention works in small tiles;
    * the attention mask, n_ctx cells (f32, or f16 with flash attention), twice for models with
      sliding-window layers, which get a mask of their own;
    * activations, ~``_ACTIVATION_FACTOR`` × n_embd floats.
    """
    n_ubatch = min(n_batch, n_ctx, _MAX_UBATCH)
    n_masks = 2 if shape.sliding_window else 1
    per_cell = n_masks * (2 if flash_attn else 4)
    if not flash_attn:
        per_cell += shape.n_head * _SCORE_BYTES
    activations = _ACTIVATION_FACTOR * shape.n_embd * 4
    return n_ubatch * (n_ctx * per_cell + activations)


def _plan(
    path: Path,
    shape: ModelShape,
    n_ctx: int,
    kv_type: KvType,
    n_batch: int,
    fa: bool,
    n_seq: int = 1,
) -> MemoryPlan:
    cells = -(-n_ctx * n_seq // _CTX_STEP) * _CTX_STEP
    kv_elements = shape.n_layer * cells * shape.n_head_kv * (shape.head_dim_k + shape.head_dim_v)
    return MemoryPlan(
        model_path=path,
        n_ctx=n_ctx,
        kv_type=kv_type,
        n_batch=n_batch,
        flash_attn=fa,
        weights_bytes=shape.weights_bytes,
        kv_cache_bytes=math.ceil(kv_elements * _kv_bytes_per_element(kv_type)),
        compute_bytes=_compute_bytes(shape, cells, n_batch, fa),
        # One logits row per sequence and step (the first is in the per-token figure).
        overhead_bytes=_RUNTIME_FIXED_BYTES
        + (_RUNTIME_BYTES_PER_TOKEN + 4 * (n_seq - 1)) * shape.n_vocab,
        n_seq=n_seq,
    )


def plan_memory(
    path: Path,
    n_ctx: int,
    kv_type: KvType = "f16",
    n_batch: int = 512,
    *,
    flash_attn: bool | None = None,
    n_seq: int = 1,
) -> MemoryPlan:
    """The memory plan for loading ``path`` with these context settings, ``n_seq`` sequences
    of ``n_ctx`` tokens each (a KV stream per sequence).

    ``flash_attn=None`` assumes flash attention exactly when the KV type needs it (see
    ``needs_flash_attn``), which is how the local engine loads models.
    """
    if n_ctx < 1 or n_batch < 1 or n_seq < 1:
        raise ValueError(
            f"n_ctx, n_batch and n_seq must be positive (got {n_ctx}, {n_batch}, {n_seq})."
        )
    fa = _flash(kv_type, flash_attn)
    return _plan(path, read_shape(path), n_ctx, kv_type, n_batch, fa, n_seq)


def largest_context(
    path: Path,
    budget_bytes: int,
    kv_type: KvType = "f16",
    n_batch: int = 512,
    *,
    flash_attn: bool | None = None,
) -> int | None:
    """The largest n_ctx (a multiple of 256, at most the trained context) that fits the budget.

    ``None`` when not even 256 tokens of context fit.
    """
    fa = _flash(kv_type, flash_attn)
    return _largest_context(path, read_shape(path), budget_bytes, kv_type, n_batch, fa)


def _flash(kv_type: KvType, flash_attn: bool | None) -> bool:
    return needs_flash_attn(kv_type) if flash_attn is None else flash_attn


def _largest_context(
    path: Path, shape: ModelShape, budget_bytes: int, kv_type: KvType, n_batch: int, fa: bool
) -> int | None:
    steps = max(shape.n_ctx_train // _CTX_STEP, 1)
    lo, hi = 0, steps  # the plan grows with n_ctx, so bisect on the number of steps
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _plan(path, shape, mid * _CTX_STEP, kv_type, n_batch, fa).fits(budget_bytes):
            lo = mid
        else:
            hi = mid - 1
    return lo * _CTX_STEP if lo else None


# --- Sizes and budgets -------------------------------------------------------------------------

# b, kb/mb/gb/tb (powers of 1000), kib/mib/gib/tib (powers of 1024); "" means bytes
_UNITS = {"": 1, "b": 1} | {
    f"{prefix}{suffix}": base**power
    for power, prefix in enumerate("kmgt", start=1)
    for suffix, base in (("b", 1000), ("ib", 1024))
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes in a size such as ``"512MiB"``, ``"1.5GiB"``, ``"800MB"`` or ``"1048576"``.

    Units are case-insensitive: B, KB/MB/GB/TB (powers of 1000), KiB/MiB/GiB/TiB (of 1024).
    """
    match = _SIZE_RE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"Cannot read {text!r} as a size: write a non-negative number with an optional unit, "
            f"e.g. 512MiB, 1.5GiB, 800MB or 1048576 (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)."
        )
    return int(float(match.group(1)) * _UNITS[unit])


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / _MIB:.0f} MiB"


def check_budget(plan: MemoryPlan, budget_bytes: int | None) -> None:
    """Raise ``MemoryBudgetError`` when the plan is over the budget (``None``: no budget)."""
    if budget_bytes is None or plan.fits(budget_bytes):
        return
    shape = read_shape(plan.model_path)
    raise MemoryBudgetError(
        f"{plan.model_path.name} needs about {_mib(plan.total_bytes)} with n_ctx={plan.n_ctx} "
        f"and kv_type={plan.kv_type} (weights {_mib(plan.weights_bytes)}, KV cache "
        f"{_mib(plan.kv_cache_bytes)}, compute {_mib(plan.compute_bytes)}, runtime "
        f"{_mib(plan.overhead_bytes)}), over the RAM budget of {_mib(budget_bytes)}. "
        f"To fit: {_context_advice(plan, shape, budget_bytes)}; or use a smaller model "
        f"(TANDEM_LOCAL_MODEL); or raise TANDEM_RAM_BUDGET_MIB."
    )


def _context_advice(plan: MemoryPlan, shape: ModelShape, budget_bytes: int) -> str:
    """Which n_ctx fits with each KV type, cheapest change first."""
    # A plan made with flash attention keeps it for every KV type; one made without gets it
    # only where the KV type requires it.
    fits = {
        kv: _largest_context(
            plan.model_path,
            shape,
            budget_bytes,
            kv,
            plan.n_batch,
            _flash(kv, plan.flash_attn or None),
        )
        for kv in KV_TYPES
    }
    own = fits[plan.kv_type]
    advice = [
        f"lower n_ctx (TANDEM_N_CTX) to {own} or less"
        if own
        else f"lowering n_ctx (TANDEM_N_CTX) is not enough: even {_CTX_STEP} does not fit"
    ]
    smaller = KV_TYPES[KV_TYPES.index(plan.kv_type) + 1 :]
    options = [f"{kv} fits n_ctx={fits[kv]}" for kv in smaller if fits[kv]]
    if options:
        advice.append(f"use a smaller KV cache type (TANDEM_KV_TYPE: {', '.join(options)})")
    return "; or ".join(advice)


def peak_rss_kib() -> int:
    """This process's peak RSS in KiB.

    ``VmHWM`` belongs to the address space created at exec; getrusage's ``ru_maxrss`` survives
    exec, so a child started from a large parent would report the parent's peak instead.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
