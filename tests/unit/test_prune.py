"""Pruning surgery on a tiny random llama: removing what contributes nothing changes nothing.

Each test makes some structure inert (a neuron, a KV group, a block whose output weights are
zero), ranks it least important, prunes it, and checks with the PyTorch forward pass that the
logits are unchanged while the shapes shrink.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tandem.errors import ConfigError
from tandem.optimize.prune import PruneSpec, apply_prune, plan_layers
from tandem.optimize.torch_llama import LlamaConfig, LlamaModel

SHAPE = {"n_layer": 3, "n_head": 4, "n_head_kv": 2, "head_dim": 4, "n_ff": 24, "n_embd": 16}
VOCAB = 50


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    e, ff, hd = SHAPE["n_embd"], SHAPE["n_ff"], SHAPE["head_dim"]
    q, kv = SHAPE["n_head"] * hd, SHAPE["n_head_kv"] * hd

    def w(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.3, shape).astype(np.float32)

    t = {"token_embd.weight": w(VOCAB, e), "output_norm.weight": 1 + w(e)}
    for i in range(SHAPE["n_layer"]):
        t |= {
            f"blk.{i}.attn_norm.weight": 1 + w(e), f"blk.{i}.ffn_norm.weight": 1 + w(e),
            f"blk.{i}.attn_q.weight": w(q, e), f"blk.{i}.attn_k.weight": w(kv, e),
            f"blk.{i}.attn_v.weight": w(kv, e), f"blk.{i}.attn_output.weight": w(e, q),
            f"blk.{i}.ffn_gate.weight": w(ff, e), f"blk.{i}.ffn_up.weight": w(ff, e),
            f"blk.{i}.ffn_down.weight": w(e, ff),
        }
    return t


def _config(shape: dict[str, int]) -> LlamaConfig:
    return LlamaConfig(n_vocab=VOCAB, n_embd=shape["n_embd"], n_layer=shape["n_layer"],
                       n_head=shape["n_head"], n_head_kv=shape["n_head_kv"], n_ff=shape["n_ff"],
                       head_dim=shape["head_dim"], rope_base=10000.0, eps=1e-5)


def _logits(tensors: dict[str, np.ndarray], shape: dict[str, int]) -> np.ndarray:
    model = LlamaModel(_config(shape), tensors)
    with torch.no_grad():
        return model(torch.tensor([[1, 7, 3, 9, 22, 5, 40]]))[0].numpy()


def _importance(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Uniform importance per input column of every matrix (tests lower what they prune)."""
    return {n: np.ones(a.shape[1]) for n, a in tensors.items() if a.ndim == 2}


def test_pruning_inert_ffn_neurons_keeps_the_logits() -> None:
    t = _tensors()
    imp = _importance(t)
    dead = [2, 5, 11, 17, 20, 23]
    for i in range(SHAPE["n_layer"]):
        t[f"blk.{i}.ffn_down.weight"][:, dead] = 0.0
        imp[f"blk.{i}.ffn_down.weight"][dead] = 0.0
    before = _logits(t, SHAPE)
    pruned, shape = apply_prune(t, SHAPE, imp, PruneSpec(ffn=18), [])
    assert shape["n_ff"] == 18
    assert pruned["blk.0.ffn_gate.weight"].shape == (18, 16)
    assert pruned["blk.2.ffn_down.weight"].shape == (16, 18)
    np.testing.assert_allclose(_logits(pruned, shape), before, atol=1e-5)


def test_pruning_an_inert_kv_group_keeps_the_logits() -> None:
    t = _tensors(1)
    imp = _importance(t)
    for i in range(SHAPE["n_layer"]):
        group = i % 2  # a different group per layer: each layer chooses its own
        cols = slice(group * 2 * 4, (group + 1) * 2 * 4)  # 2 query heads of 4 per group
        t[f"blk.{i}.attn_output.weight"][:, cols] = 0.0
        imp[f"blk.{i}.attn_output.weight"][cols] = 0.0
    before = _logits(t, SHAPE)
    pruned, shape = apply_prune(t, SHAPE, imp, PruneSpec(kv_groups=1), [])
    assert (shape["n_head"], shape["n_head_kv"]) == (2, 1)
    assert pruned["blk.1.attn_q.weight"].shape == (8, 16)
    assert pruned["blk.1.attn_k.weight"].shape == (4, 16)
    np.testing.assert_allclose(_logits(pruned, shape), before, atol=1e-5)


def test_dropping_an_identity_block_keeps_the_logits() -> None:
    t = _tensors(2)
    t["blk.1.attn_output.weight"][:] = 0.0
    t["blk.1.ffn_down.weight"][:] = 0.0
    before = _logits(t, SHAPE)
    drop = plan_layers({0: 0.5, 1: 0.0, 2: 0.3}, 3, 1)
    assert drop == [1]
    pruned, shape = apply_prune(t, SHAPE, _importance(t), PruneSpec(drop_layers=1), drop)
    assert shape["n_layer"] == 2
    assert not any(n.startswith("blk.2.") for n in pruned)
    np.testing.assert_array_equal(pruned["blk.1.attn_q.weight"], t["blk.2.attn_q.weight"])
    np.testing.assert_allclose(_logits(pruned, shape), before, atol=1e-5)


def test_hidden_channels_keep_the_most_important_everywhere() -> None:
    t = _tensors(3)
    imp = _importance(t)
    low = [0, 3, 8, 15]
    for i in range(SHAPE["n_layer"]):
        imp[f"blk.{i}.attn_q.weight"][low] = 0.0
        imp[f"blk.{i}.ffn_gate.weight"][low] = 0.0
    pruned, shape = apply_prune(t, SHAPE, imp, PruneSpec(hidden=12), [])
    keep = [c for c in range(16) if c not in low]
    assert shape["n_embd"] == 12
    np.testing.assert_array_equal(pruned["token_embd.weight"], t["token_embd.weight"][:, keep])
    np.testing.assert_array_equal(pruned["blk.0.ffn_down.weight"],
                                  t["blk.0.ffn_down.weight"][keep])
    np.testing.assert_array_equal(pruned["output_norm.weight"], t["output_norm.weight"][keep])
    assert pruned["blk.2.attn_q.weight"].shape == (16, 12)  # head width is unchanged
    assert _logits(pruned, shape).shape == (7, VOCAB)


def test_bad_targets_are_refused() -> None:
    t = _tensors()
    with pytest.raises(ConfigError, match="--ffn"):
        apply_prune(t, SHAPE, _importance(t), PruneSpec(ffn=48), [])
    with pytest.raises(ConfigError, match="--drop-layers"):
        plan_layers({0: 0.1, 1: 0.2, 2: 0.3}, 3, 3)
