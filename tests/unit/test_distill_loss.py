"""The distillation loss: forward KL over the teacher's top-k plus one bucket for the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tandem.optimize.distill import _kd_loss

VOCAB, TOP_K = 40, 6


def _teacher(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full teacher log-probs, the indices of its top-k, and the cached (float16) top-k values."""
    gen = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(5, VOCAB, generator=gen) * 1.5, dim=-1)
    idx = logp.topk(TOP_K, dim=-1).indices
    return logp, idx, logp.gather(-1, idx).half()


def _coarse_kl(p: np.ndarray, q: np.ndarray, idx: np.ndarray) -> float:
    """KL between two full distributions after merging everything outside idx into one outcome."""
    total = 0.0
    for row_p, row_q, row_idx in zip(p, q, idx, strict=True):
        pt, qt = row_p[row_idx], row_q[row_idx]
        pr, qr = 1 - pt.sum(), 1 - qt.sum()
        total += float(np.sum(pt * np.log(pt / qt)) + pr * np.log(pr / qr))
    return total / len(p)


def test_loss_is_the_kl_of_the_coarsened_distributions() -> None:
    t_full, idx, cached = _teacher(0)
    student = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p = np.exp(cached.double().numpy())
    # Put the teacher's float16 top-k back into a full distribution for the reference.
    p_full = t_full.double().exp().numpy()
    np.put_along_axis(p_full, idx.numpy(), p, axis=1)
    q_full = torch.softmax(student, dim=-1).numpy()
    expected = _coarse_kl(p_full, q_full, idx.numpy())
    assert float(_kd_loss(student, idx, cached)) == pytest.approx(expected, rel=1e-6)


def test_loss_vanishes_only_when_the_student_matches_the_teacher() -> None:
    t_full, idx, cached = _teacher(2)
    assert float(_kd_loss(t_full.double(), idx, cached)) < 1e-3  # float16 cache rounding only
    other = t_full.clone()
    other[:, 0] += 3.0
    assert float(_kd_loss(other, idx, cached)) > 0.01


def test_minimising_it_keeps_the_teacher_s_mass_outside_its_top_k() -> None:
    # A teacher whose top-k hold only part of the mass: a student trained on the renormalised
    # top-k would drive its own tail mass toward zero; this loss must reproduce the teacher's.
    _, idx, cached = _teacher(3)
    teacher_rest = 1 - cached.float().exp().sum(-1)
    assert float(teacher_rest.min()) > 0.05
    logits = torch.zeros(5, VOCAB, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(400):
        opt.zero_grad()
        _kd_loss(logits, idx, cached).backward()
        opt.step()
    q = torch.softmax(logits.detach(), dim=-1)
    student_rest = 1 - q.gather(-1, idx).sum(-1)
    assert torch.allclose(student_rest, teacher_rest, atol=0.01)
    assert torch.allclose(q.gather(-1, idx), cached.float().exp(), atol=0.01)
