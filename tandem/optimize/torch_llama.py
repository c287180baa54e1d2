"""A PyTorch forward pass of a llama-architecture GGUF model, faithful to llama.cpp's graph.

Distillation needs gradients, which llama.cpp does not give; transformers' GGUF loader would map
the weights back to Hugging Face names and undo the Q/K permutation llama.cpp's converter
applies, which is one more place to get wrong. This module reads the GGUF tensors as they are
and computes what llama.cpp computes for ``general.architecture = llama``: RMSNorm, rotary
embeddings in llama.cpp's "normal" mode (adjacent pairs rotated, the layout the converter's Q/K
permutation produces), grouped-query causal attention, SwiGLU, and an output head tied to the
token embedding when the file has no ``output.weight``. ``tests`` check its logits against
llama.cpp on the same tokens.

PyTorch is an optional extra (``pip install 'tandem[optimize]'``): the gateway never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.errors import ConfigError

try:  # optional dependency
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - exercised only without the extra
    torch = None  # type: ignore[assignment]


def require_torch() -> None:
    if torch is None:
        raise ConfigError("Distillation needs PyTorch: pip install 'tandem[optimize]'.")


@dataclass(frozen=True)
class LlamaConfig:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    head_dim: int
    rope_base: float
    eps: float

    @classmethod
    def from_fields(cls, fields: dict[str, Any], n_vocab: int) -> LlamaConfig:
        arch = fields.get("general.architecture")
        if arch != "llama":
            raise ConfigError(f"Only llama-architecture models are supported, not {arch!r}.")

        def get(key: str, default: Any = None) -> Any:
            value = fields.get(f"llama.{key}", default)
            if value is None:
                raise ConfigError(f"The model has no llama.{key} metadata.")
            return value

        n_embd = int(get("embedding_length"))
        n_head = int(get("attention.head_count"))
        head_dim = int(get("attention.key_length", n_embd // n_head))
        return cls(
            n_vocab=n_vocab, n_embd=n_embd, n_layer=int(get("block_count")), n_head=n_head,
            n_head_kv=int(get("attention.head_count_kv", n_head)),
            n_ff=int(get("feed_forward_length")), head_dim=head_dim,
            rope_base=float(get("rope.freq_base", 10000.0)),
            eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        )


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metadata values and every tensor as float32 numpy (numpy order: ne0 last)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable GGUF file: {exc}") from exc
    fields: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name.startswith("tokenizer."):
            continue
        try:
            fields[name] = field.contents()
        except (ValueError, TypeError, IndexError):
            continue
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if t.tensor_type.name in {"F32", "F16"}:
            data = np.asarray(t.data, np.float32)
        else:
            data = dequantize(t.data, t.tensor_type).astype(np.float32)
        tensors[t.name] = data.reshape(shape)
    return fields, tensors


if torch is not None:

    class RMSNorm(nn.Module):
        def __init__(self, weight: torch.Tensor, eps: float):
            super().__init__()
            self.weight = nn.Parameter(weight)
            self.eps = eps

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    class Block(nn.Module):
        def __init__(self, cfg: LlamaConfig, w: dict[str, torch.Tensor]):
            super().__init__()
            self.cfg = cfg
            self.attn_norm = RMSNorm(w["attn_norm.weight"], cfg.eps)
            self.ffn_norm = RMSNorm(w["ffn_norm.weight"], cfg.eps)
            self.q = nn.Parameter(w["attn_q.weight"])
            self.k = nn.Parameter(w["attn_k.weight"])
            self.v = nn.Parameter(w["attn_v.weight"])
            self.o = nn.Parameter(w["attn_output.weight"])
            self.gate = nn.Parameter(w["ffn_gate.weight"])
            self.up = nn.Parameter(w["ffn_up.weight"])
            self.down = nn.Parameter(w["ffn_down.weight"])

        def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            hd = self.cfg.head_dim
            h = self.attn_norm(x)
            q = F.linear(h, self.q).view(b, t, -1, hd).transpose(1, 2)
            k = F.linear(h, self.k).view(b, t, -1, hd).transpose(1, 2)
            v = F.linear(h, self.v).view(b, t, -1, hd).transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            groups = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + F.linear(att.transpose(1, 2).reshape(b, t, -1), self.o)
            h = self.ffn_norm(x)
            return x + F.linear(F.silu(F.linear(h, self.gate)) * F.linear(h, self.up), self.down)

    class LlamaModel(nn.Module):
        """The whole model; ``forward(tokens [B, T]) -> logits [B, T, vocab]``."""

        def __init__(self, cfg: LlamaConfig, tensors: dict[str, np.ndarray]):
            super().__init__()
            self.cfg = cfg

            def t(name: str) -> torch.Tensor:
                if name not in tensors:
                    raise ConfigError(f"The model has no tensor {name}.")
                return torch.from_numpy(np.array(tensors[name], np.float32))

            self.tok_embd = nn.Parameter(t("token_embd.weight"))
            self.tied = "output.weight" not in tensors
            self.output = None if self.tied else nn.Parameter(t("output.weight"))
            self.output_norm = RMSNorm(t("output_norm.weight"), cfg.eps)
            self.blocks = nn.ModuleList(
                Block(cfg, {k.split(".", 2)[2]: t(k) for k in tensors if k.startswith(f"blk.{i}.")})
                for i in range(cfg.n_layer)
            )

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = F.embedding(tokens, self.tok_embd)
            cos, sin = _rope_tables(tokens.shape[1], self.cfg, x.device)
            for block in self.blocks:
                x = block(x, cos, sin)
            head = self.tok_embd if self.output is None else self.output
            return F.linear(self.output_norm(x), head)

        def gguf_tensors(self) -> dict[str, np.ndarray]:
            """Current weights under their GGUF names (numpy order), for export."""
            out = {"token_embd.weight": self.tok_embd,
                   "output_norm.weight": self.output_norm.weight}
            if self.output is not None:
                out["output.weight"] = self.output
            names = {"attn_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
                     "attn_q.weight": "q", "attn_k.weight": "k", "attn_v.weight": "v",
                     "attn_output.weight": "o", "ffn_gate.weight": "gate", "ffn_up.weight": "up",
                     "ffn_down.weight": "down"}
            for i, block in enumerate(self.blocks):
                params = dict(block.named_parameters())
                for gguf_name, attr in names.items():
                    out[f"blk.{i}.{gguf_name}"] = params[attr]
            return {k: v.detach().float().numpy().copy() for k, v in out.items()}

    def _rope_tables(n: int, cfg: LlamaConfig, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        half = cfg.head_dim // 2
        inv = cfg.rope_base ** (-torch.arange(0, half, dtype=torch.float64, device=device) / half)
        angles = torch.arange(n, dtype=torch.float64, device=device)[:, None] * inv[None, :]
        return angles.cos().float(), angles.sin().float()

    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """llama.cpp's NORM rope: rotate (x[2i], x[2i+1]) by pos · base^(-2i/d)."""
        even, odd = x[..., 0::2], x[..., 1::2]
        out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return out.flatten(-2)


def load_model(path: Path) -> Any:
    """A ``LlamaModel`` with the weights of a (possibly quantized) llama GGUF, in float32."""
    require_torch()
    fields, tensors = read_gguf(path)
    cfg = LlamaConfig.from_fields(fields, n_vocab=tensors["token_embd.weight"].shape[0])
    return LlamaModel(cfg, tensors)

