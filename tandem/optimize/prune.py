"""``tandem prune``: structured pruning of a llama-architecture GGUF, importance from activations.

One calibration pass through llama.cpp (the imatrix collector) gives every statistic needed:

- depth: the mean angular distance between each block's input and output (ShortGPT's block
  influence; Gromov et al.); the blocks that change the residual stream least are removed;
- FFN neurons: the mean square of each intermediate activation (the imatrix of ``ffn_down``);
- attention: per query head, the energy of its slice of ``attn_output``'s input, summed over the
  heads of each KV group; whole groups are removed so grouped-query attention stays regular;
- hidden channels: the energy of each channel after the block norms (the imatrix of ``attn_q``
  and ``ffn_gate``, summed over blocks), as Minitron ranks embedding channels.

Each layer keeps its own most important neurons and groups (the same count in every layer, as
GGUF's metadata has one width per model); hidden channels are one set for the whole residual
stream. The surgery is numpy over F32 tensors; the output is an F32 GGUF with the shape keys
updated, ready for ``tandem distill`` and ``tandem quantize``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tandem.errors import ConfigError

Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PruneSpec:
    drop_layers: int = 0
    ffn: int | None = None  # target feed-forward width
    kv_groups: int | None = None  # target number of KV heads
    hidden: int | None = None  # target embedding width

    def is_empty(self) -> bool:
        return not self.drop_layers and self.ffn is None and self.kv_groups is None \
            and self.hidden is None


@dataclass
class PruneReport:
    src: str
    out: str
    spec: dict[str, Any]
    dropped_layers: list[int] = field(default_factory=list)
    block_influence: dict[int, float] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    non_embedding_before: int = 0
    non_embedding_after: int = 0
    shape_before: dict[str, int] = field(default_factory=dict)
    shape_after: dict[str, int] = field(default_factory=dict)

    @property
    def non_embedding_pruned(self) -> float:
        return 1 - self.non_embedding_after / max(self.non_embedding_before, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "non_embedding_pruned": self.non_embedding_pruned}


def _non_embedding(tensors: dict[str, Array]) -> int:
    return sum(a.size for n, a in tensors.items() if n.startswith("blk."))


def _top(scores: npt.NDArray[np.float64], keep: int) -> npt.NDArray[np.intp]:
    """Indices of the ``keep`` largest scores, in their original order."""
    return np.sort(np.argsort(scores)[::-1][:keep])


def plan_layers(influence: dict[int, float], n_layer: int, drop: int) -> list[int]:
    """The ``drop`` blocks with the lowest influence (ties: the later block)."""
    if not 0 <= drop < n_layer:
        raise ConfigError(f"--drop-layers must be between 0 and {n_layer - 1}.")
    missing = [i for i in range(n_layer) if i not in influence]
    if drop and missing:
        raise ConfigError(f"No block-influence measurement for blocks {missing}.")
    order = sorted(range(n_layer), key=lambda i: (influence.get(i, 1.0), -i))
    return sorted(order[:drop])


def apply_prune(
    tensors: dict[str, Array],
    shape: dict[str, int],
    importance: dict[str, npt.NDArray[np.float64]],
    spec: PruneSpec,
    drop: list[int],
) -> tuple[dict[str, Array], dict[str, int]]:
    """The surgery, on numpy tensors (numpy order: [out, in]); returns tensors and new shape."""
    n_layer, n_head, n_kv = shape["n_layer"], shape["n_head"], shape["n_head_kv"]
    hd, n_ff, n_embd = shape["head_dim"], shape["n_ff"], shape["n_embd"]
    out = dict(tensors)
    new = dict(shape)
    if spec.ffn is not None:
        if not 0 < spec.ffn <= n_ff:
            raise ConfigError(f"--ffn must be between 1 and {n_ff}.")
        for i in range(n_layer):
            keep = _top(importance[f"blk.{i}.ffn_down.weight"], spec.ffn)
            out[f"blk.{i}.ffn_gate.weight"] = out[f"blk.{i}.ffn_gate.weight"][keep]
            out[f"blk.{i}.ffn_up.weight"] = out[f"blk.{i}.ffn_up.weight"][keep]
            out[f"blk.{i}.ffn_down.weight"] = out[f"blk.{i}.ffn_down.weight"][:, keep]
        new["n_ff"] = spec.ffn
    if spec.kv_groups is not None:
        if not 0 < spec.kv_groups <= n_kv:
            raise ConfigError(f"--kv-groups must be between 1 and {n_kv}.")
        per = n_head // n_kv
        for i in range(n_layer):
            energy = importance[f"blk.{i}.attn_output.weight"].reshape(n_head, hd).sum(1)
            groups = _top(energy.reshape(n_kv, per).sum(1), spec.kv_groups)
            heads = np.concatenate([np.arange(g * per, (g + 1) * per) for g in groups])
            q_rows = np.concatenate([np.arange(h * hd, (h + 1) * hd) for h in heads])
            kv_rows = np.concatenate([np.arange(g * hd, (g + 1) * hd) for g in groups])
            out[f"blk.{i}.attn_q.weight"] = out[f"blk.{i}.attn_q.weight"][q_rows]
            out[f"blk.{i}.attn_k.weight"] = out[f"blk.{i}.attn_k.weight"][kv_rows]
            out[f"blk.{i}.attn_v.weight"] = out[f"blk.{i}.attn_v.weight"][kv_rows]
            out[f"blk.{i}.attn_output.weight"] = out[f"blk.{i}.attn_output.weight"][:, q_rows]
        new["n_head"], new["n_head_kv"] = spec.kv_groups * per, spec.kv_groups
    if spec.hidden is not None:
        if not 0 < spec.hidden <= n_embd:
            raise ConfigError(f"--hidden must be between 1 and {n_embd}.")
        energy = sum(importance[f"blk.{i}.{w}.weight"] for i in range(n_layer)
                     for w in ("attn_q", "ffn_gate"))
        keep = _top(np.asarray(energy), spec.hidden)
        for name, a in list(out.items()):
            if name in ("token_embd.weight", "output.weight"):
                out[name] = a[:, keep]
            elif name.endswith("_norm.weight"):
                out[name] = a[keep]
            elif re.search(r"\.(attn_q|attn_k|attn_v|ffn_gate|ffn_up)\.weight$", name):
                out[name] = a[:, keep]
            elif re.search(r"\.(attn_output|ffn_down)\.weight$", name):
                out[name] = a[keep]
        new["n_embd"] = spec.hidden
    if drop:
        kept = [i for i in range(n_layer) if i not in drop]
        renamed: dict[str, Array] = {}
        for name, a in out.items():
            m = re.match(r"blk\.(\d+)\.(.*)", name)
            if m is None:
                renamed[name] = a
            elif int(m[1]) in kept:
                renamed[f"blk.{kept.index(int(m[1]))}.{m[2]}"] = a
        out = renamed
        new["n_layer"] = len(kept)
    return out, new


def _shape(cfg: Any) -> dict[str, int]:
    return {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_head_kv": cfg.n_head_kv,
            "head_dim": cfg.head_dim, "n_ff": cfg.n_ff, "n_embd": cfg.n_embd}


def prune(
    src: Path,
    out: Path,
    spec: PruneSpec,
    calibration: str,
    *,
    dataset: str = "calibration",
    chunks: int = 16,
    n_threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PruneReport:
    """Measure importance on ``calibration`` text, prune ``src``, write an F32 GGUF ``out``."""
    from gguf import GGUFValueType

    from tandem.optimize.gguf_io import write_f32_like
    from tandem.optimize.imatrix import compute_imatrix
    from tandem.optimize.torch_llama import LlamaConfig, read_gguf

    if spec.is_empty():
        raise ConfigError("Nothing to prune: give --drop-layers, --ffn, --kv-groups or --hidden.")
    fields, tensors = read_gguf(src)
    cfg = LlamaConfig.from_fields(fields, n_vocab=tensors["token_embd.weight"].shape[0])
    stats, _ = compute_imatrix(src, calibration, dataset=dataset, limit=chunks,
                               n_threads=n_threads, progress=progress)
    importance = {k: v / max(stats.counts[k], 1) for k, v in stats.sums.items()}
    influence = stats.block_influence()
    drop = plan_layers(influence, cfg.n_layer, spec.drop_layers)
    before = _shape(cfg)
    pruned, after = apply_prune(tensors, before, importance, spec, drop)
    u32 = GGUFValueType.UINT32
    overrides = {
        "llama.block_count": (after["n_layer"], u32),
        "llama.feed_forward_length": (after["n_ff"], u32),
        "llama.attention.head_count": (after["n_head"], u32),
        "llama.attention.head_count_kv": (after["n_head_kv"], u32),
        "llama.embedding_length": (after["n_embd"], u32),
        # Head width no longer follows from embedding width / heads: state it.
        "llama.attention.key_length": (after["head_dim"], u32),
        "llama.attention.value_length": (after["head_dim"], u32),
    }
    write_f32_like(src, out, pruned, overrides)
    return PruneReport(
        src=str(src), out=str(out), spec=asdict(spec), dropped_layers=drop,
        block_influence=influence,
        params_before=sum(a.size for a in tensors.values()),
        params_after=sum(a.size for a in pruned.values()),
        non_embedding_before=_non_embedding(tensors), non_embedding_after=_non_embedding(pruned),
        shape_before=before, shape_after=after,
    )
