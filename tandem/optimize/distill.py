"""``tandem distill``: heal a pruned student from its teacher on CPU, resumable.

Logit distillation: the teacher (any GGUF llama.cpp runs, usually the unpruned F32 reference)
scores the training text once; its top-k next-token log-probabilities are cached to disk chunk
by chunk (a few MB, not a logits file). The student, a PyTorch copy of the pruned GGUF
(``torch_llama``), is trained on forward KL from the teacher's top-k distribution (the rest of
its mass as one bucket) mixed with next-token cross-entropy. Checkpoints (model, optimizer, step)
are written atomically every few steps and picked up again by the same command, so a run
survives being stopped. The result is exported as an F32 GGUF with the student's metadata, ready
for ``tandem quantize``.

``--task`` does sequence-level distillation instead: the teacher answers a multiple-choice task's
training items (its choice by log-likelihood) and the student learns to produce those answers;
this works across tokenizers, so the teacher can be a different, larger model.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.errors import ConfigError

Progress = Callable[[str, int, int, dict[str, float]], None]


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 300
    seq_len: int = 512
    lr: float = 1e-4
    warmup: int = 20
    top_k: int = 32
    alpha_ce: float = 0.1  # weight of next-token cross-entropy (1 - alpha on the KL term)
    checkpoint_every: int = 20
    train_embeddings: bool = False  # the tied embedding/output matrix is 28% of SmolLM2
    n_threads: int | None = None
    seed: int = 0


def teacher_targets(teacher: Path, text: str, cache: Path, *, seq_len: int, top_k: int,
                    limit: int, n_threads: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Per chunk: tokens and the teacher's top-k log-probs at each position (cached, resumable)."""
    from tandem.optimize.metrics import chunks
    from tandem.scoring import Scorer

    cache.mkdir(parents=True, exist_ok=True)
    scorer: Scorer | None = None
    paths = []
    try:
        for i in range(limit):
            path = cache / f"chunk{i:05d}.npz"
            paths.append(path)
            if path.exists():
                continue
            if scorer is None:
                scorer = Scorer(teacher, n_ctx=seq_len, n_threads=n_threads)
                todo = chunks(scorer.tokenize(text, special=True), seq_len,
                              bos=scorer.bos if scorer.add_bos else None)
                if len(todo) < limit:
                    raise ConfigError(f"The training text has {len(todo)} chunks of {seq_len} "
                                      f"tokens; ask for at most that many (--chunks).")
            tokens = todo[i]
            rows = scorer.logprobs(tokens)
            idx = np.argpartition(rows, -top_k, axis=1)[:, -top_k:]
            vals = np.take_along_axis(rows, idx, axis=1)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, tokens=np.asarray(tokens, np.int32), idx=idx.astype(np.int32),
                     logp=vals.astype(np.float16))
            os.replace(tmp, path)
            if progress is not None:
                progress(i + 1, limit)
    finally:
        if scorer is not None:
            scorer.close()
    return paths


def _kd_loss(logits: Any, idx: Any, t_logp: Any) -> Any:
    """Forward KL(teacher ‖ student) over the teacher's top-k tokens plus one bucket for the rest.

    The cache keeps only the teacher's top-k log-probabilities, so the rest of its distribution is
    one bucket of mass 1 − Σ top-k, compared with the student's mass outside those k tokens. This
    is the exact KL between the two distributions coarsened to k + 1 outcomes. Renormalising the
    teacher over its top-k instead would teach the student to put no mass outside them, while
    SmolLM2 leaves 17 % there on average (top-32 on WikiText): a bias toward overconfidence that
    full-vocabulary KLD and perplexity then charge for.
    """
    import torch

    log_q = torch.log_softmax(logits, dim=-1)
    s_top = log_q.gather(-1, idx)
    s_rest = log_q.scatter(-1, idx, float("-inf")).logsumexp(-1)
    t_top = t_logp.float()
    # The cache is float16: its top-k mass can round to a hair above 1.
    t_rest = torch.log1p(-t_top.exp().sum(-1).clamp(max=1 - 1e-6))
    kl = (t_top.exp() * (t_top - s_top)).sum(-1) + t_rest.exp() * (t_rest - s_rest)
    return kl.mean()


def distill(student: Path, teacher: Path, out: Path, text: str, *, chunks: int,
            config: DistillConfig, workdir: Path, progress: Progress | None = None
            ) -> dict[str, Any]:
    """Train ``student`` toward ``teacher`` on ``text``; checkpoints in ``workdir``; export."""
    import torch
    import torch.nn.functional as F

    from tandem.optimize.gguf_io import write_f32_like
    from tandem.optimize.torch_llama import load_model

    torch.manual_seed(config.seed)
    # Adam's moments can drift toward denormal floats over a long run, which x86 CPUs
    # handle slowly; flushing them to zero costs nothing measurable in precision here.
    torch.set_flush_denormal(True)
    if config.n_threads:
        torch.set_num_threads(config.n_threads)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(asdict(config), indent=1))
    targets = teacher_targets(
        teacher, text, workdir / "teacher", seq_len=config.seq_len, top_k=config.top_k,
        limit=chunks, n_threads=config.n_threads,
        progress=None if progress is None else lambda i, n: progress("teacher", i, n, {}))
    model = load_model(student)
    model.tok_embd.requires_grad_(config.train_embeddings)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0, betas=(0.9, 0.95))
    ckpt = workdir / "checkpoint.pt"
    step, history = 0, []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, history = state["step"], state["history"]

    def lr_at(s: int) -> float:
        if s < config.warmup:
            return config.lr * (s + 1) / config.warmup
        frac = (s - config.warmup) / max(config.steps - config.warmup, 1)
        return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    order = np.random.default_rng(config.seed).permutation(len(targets))
    model.train()
    while step < config.steps:
        started = time.perf_counter()
        data = np.load(targets[order[step % len(order)]])
        tokens = torch.from_numpy(data["tokens"].astype(np.int64))
        idx = torch.from_numpy(data["idx"][:-1].astype(np.int64))
        t_logp = torch.from_numpy(data["logp"][:-1].astype(np.float32))
        logits = model(tokens[None, :-1])[0]
        kd = _kd_loss(logits, idx, t_logp)
        ce = F.cross_entropy(logits, tokens[1:])
        loss = (1 - config.alpha_ce) * kd + config.alpha_ce * ce
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        losses = {"kd": float(kd.detach()), "ce": float(ce.detach())}
        history.append({"step": step, **losses, "s": time.perf_counter() - started})
        if progress is not None:
            progress("distill", step, config.steps, losses)
        if step % config.checkpoint_every == 0 or step == config.steps:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "history": history}, tmp)
            os.replace(tmp, ckpt)
            # A small readable log next to the checkpoint, for watching a background run.
            (workdir / "history.json").write_text(json.dumps(history))
    write_f32_like(student, out, model.gguf_tensors())
    tokens_seen = step * (config.seq_len - 1)
    return {"student": str(student), "teacher": str(teacher), "out": str(out),
            "config": asdict(config), "steps": step, "tokens": tokens_seen,
            "chunks": len(targets), "history": history[-20:],
            "seconds": sum(h["s"] for h in history)}


def task_distill(student: Path, teacher: Path, out: Path, items: Sequence[Any], *,
                 epochs: int, lr: float, workdir: Path, n_threads: int | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Sequence-level KD on a multiple-choice task: learn the teacher's chosen answers."""
    import torch
    import torch.nn.functional as F

    from tandem.optimize.gguf_io import write_f32_like
    from tandem.optimize.metrics import choose
    from tandem.optimize.torch_llama import load_model
    from tandem.scoring import Scorer

    workdir.mkdir(parents=True, exist_ok=True)
    answers_path = workdir / "teacher_answers.json"
    if answers_path.exists():
        answers = json.loads(answers_path.read_text())
    else:
        scorer = Scorer(teacher, n_ctx=512, n_threads=n_threads)
        answers = []
        try:
            for i, item in enumerate(items):
                conts = item.continuations()
                lls = scorer.continuation_logprob(scorer.tokenize(item.context(), special=True),
                                                  [scorer.tokenize(c) for c in conts])
                answers.append(choose(lls, conts)[1])
                if progress is not None:
                    progress("teacher answers", i + 1, len(items), {})
        finally:
            scorer.close()
        answers_path.write_text(json.dumps(answers))
    tok = Scorer(student, n_ctx=512, n_threads=n_threads)
    examples = []
    for item, answer in zip(items, answers, strict=True):
        ctx = tok.tokenize(item.context(), special=True)
        cont = tok.tokenize(item.continuations()[answer])
        examples.append((ctx, cont))
    tok.close()
    model = load_model(student)
    model.tok_embd.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(0)
    total = epochs * len(examples)
    done = 0
    for _ in range(epochs):
        for j in rng.permutation(len(examples)):
            ctx, cont = examples[j]
            seq = torch.tensor([ctx + cont])
            logits = model(seq[:, :-1])[0]
            target = seq[0, 1:].clone()
            target[: len(ctx) - 1] = -100  # learn the answer, not the question
            loss = F.cross_entropy(logits, target, ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            done += 1
            if progress is not None:
                progress("task distill", done, total, {"ce": float(loss.detach())})
    write_f32_like(student, out, model.gguf_tensors())
    return {"student": str(student), "teacher": str(teacher), "out": str(out),
            "items": len(examples), "epochs": epochs, "lr": lr,
            "teacher_answers": answers_path.name}
