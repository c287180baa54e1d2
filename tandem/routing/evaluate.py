"""``tandem route-eval``: score routers offline on a labeled task, as RouteLLM does.

Both tiers run over the task once (cached per item, see ``tasks``); every router is then a
score per item, and its deferral curve, APGR, CPT(50%), CPT(80%) and AUROC follow, with random
and oracle baselines on the same items.

Routers:
- ``random``, ``oracle``: the baselines.
- ``conf-<feature>``: one confidence statistic of the local answer, no training (e.g.
  ``conf-p_max`` for multiple choice, ``conf-lp_min`` for generation).
- ``cascade`` (confidence features), ``prompt`` (prompt features, before generation),
  ``combined`` (both): learned (``model.LinearRouter``). They are scored by cross-fitting: the
  items are split into folds, and each fold is scored by a router trained on the other folds
  only, so no item is scored by a router that saw it. Folds are by item hash, and for MMLU by
  subject, so the prompt router is always tested on subjects it was not trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tandem.errors import ConfigError
from tandem.routing.metrics import deferral_curve, oracle_scores, random_baseline, score_router
from tandem.routing.model import LinearRouter
from tandem.routing.signals import (
    CHOICE_FEATURES,
    GENERATION_FEATURES,
    PROMPT_FEATURES,
    PromptIndex,
    choice_confidence,
    generation_confidence,
    prompt_features,
)
from tandem.routing.tasks import MULTIPLE_CHOICE, Item

LEARNED = ("cascade", "prompt", "combined")
# Confidence statistics where a higher value means *less* sure (the rest: more sure).
_UNSURE = {"entropy", "pred_prior", "function_words", "copy_recency"}
DEFAULT_C = 0.3  # fixed L2 strength of the learned routers: not tuned on the reported items


@dataclass
class TaskRows:
    """Per-item features and both tiers' correctness for one task."""

    task: str
    items: list[Item]
    features: list[dict[str, float]]
    local_ok: np.ndarray
    cloud_ok: np.ndarray
    confidence: tuple[str, ...]  # the names of the confidence features present

    @property
    def gains(self) -> np.ndarray:
        gains: np.ndarray = self.cloud_ok - self.local_ok
        return gains


def mc_prompt(item: Item) -> str:
    """A multiple-choice item as a user would type it: the question, then lettered choices."""
    letters = "ABCDEFGH"
    lines = [f"{letters[i]}. {str(c).strip()}" for i, c in enumerate(item.fields["choices"])]
    return "\n".join([item.prompt.rstrip(), *lines])


def build_rows(task: str, items: Sequence[Item],
               local: Mapping[str, Mapping[str, Any]] | None = None,
               cloud: Mapping[str, Mapping[str, Any]] | None = None) -> TaskRows:
    """Features and labels; MMLU carries its labels, the other tasks take the tiers' records."""
    feats: list[dict[str, float]] = []
    lo: list[int] = []
    cl: list[int] = []
    confidence: tuple[str, ...] = ()
    for item in items:
        if task == "mmlu":
            row = prompt_features(item.prompt)
            lo.append(int(item.fields["weak"]))
            cl.append(int(item.fields["strong"]))
        else:
            assert local is not None and cloud is not None
            rec = local[item.key]
            if task in MULTIPLE_CHOICE:
                row = prompt_features(mc_prompt(item))
                row.update(choice_confidence(rec["ll"], rec["n_bytes"], rec["ll_uncond"],
                                             rec["n_tokens"]))
                confidence = CHOICE_FEATURES
            else:
                row = prompt_features(item.prompt)
                row.update(generation_confidence(rec["logprobs"], rec["word"],
                                                 PromptIndex.of(item.prompt)))
                confidence = GENERATION_FEATURES
            lo.append(int(rec["correct"]))
            cl.append(int(cloud[item.key]["correct"]))
        feats.append(row)
    return TaskRows(task, list(items), feats, np.array(lo), np.array(cl), confidence)


def router_names(rows: TaskRows) -> list[str]:
    names = ["random", "oracle"]
    names += [f"conf-{f}" for f in rows.confidence]
    names += [n for n in LEARNED if rows.confidence or n == "prompt"]
    return names


def learned_features(name: str, rows: TaskRows) -> tuple[str, ...]:
    if name == "prompt":
        return PROMPT_FEATURES
    if name == "cascade":
        return rows.confidence
    # Stacked: the prompt router's score is one feature, not its twenty inputs (which overfit
    # next to the confidence features: measured on ARC-Easy, APGR 0.72 vs 0.76 for cascade).
    return (*rows.confidence, "prompt_score")


def fold_of(item: Item, folds: int) -> int:
    """The item's fold: by subject when the task has subjects (MMLU), else by item."""
    basis = item.group or item.key
    return int(hashlib.sha256(basis.encode()).hexdigest()[:8], 16) % folds


def _folds(rows: TaskRows, index: np.ndarray, folds: int) -> np.ndarray:
    return np.array([fold_of(rows.items[i], folds) for i in index])


def _with_prompt_scores(rows: TaskRows, train: np.ndarray, test: np.ndarray, folds: int,
                        c: float) -> list[dict[str, float]]:
    """Feature rows with ``prompt_score``: out-of-fold on ``train``, from all of it on ``test``."""
    feats = [dict(f) for f in rows.features]
    inner = _fit_scores("prompt", rows, train, folds, c)
    for i, s in zip(train, inner, strict=True):
        feats[i]["prompt_score"] = float(s)
    router = LinearRouter.fit([rows.features[i] for i in train], rows.gains[train],
                              PROMPT_FEATURES, c)
    for i, s in zip(test, router.scores(router.matrix([rows.features[i] for i in test])),
                    strict=True):
        feats[i]["prompt_score"] = float(s)
    return feats


def _fit_scores(name: str, rows: TaskRows, index: np.ndarray, folds: int, c: float
                ) -> np.ndarray:
    """Out-of-fold scores of router ``name`` for the items ``index`` (folds within them)."""
    fold = _folds(rows, index, folds)
    if len(set(fold.tolist())) < 2:
        raise ConfigError(f"Cross-fitting needs items in at least two folds; got {len(index)} "
                          "items (use more items or fewer --folds).")
    features = learned_features(name, rows)
    scores = np.zeros(len(index))
    for k in sorted(set(fold.tolist())):
        train, test = index[fold != k], index[fold == k]
        feats = (_with_prompt_scores(rows, train, test, folds, c) if name == "combined"
                 else rows.features)
        router = LinearRouter.fit([feats[i] for i in train], rows.gains[train], features, c)
        scores[fold == k] = router.scores(router.matrix([feats[i] for i in test]))
    return scores


def cross_fit(name: str, rows: TaskRows, folds: int, c: float = DEFAULT_C) -> np.ndarray:
    """Out-of-fold scores of a learned router: each fold scored by a router trained without it.

    For ``combined`` the prompt router's score inside each training part is itself
    out-of-fold, so the stacked router never learns from a score that saw its own label.
    """
    return _fit_scores(name, rows, np.arange(len(rows.items)), folds, c)


def router_scores(name: str, rows: TaskRows, folds: int) -> np.ndarray:
    if name == "oracle":
        return oracle_scores(rows.local_ok, rows.cloud_ok)
    if name.startswith("conf-"):
        feature = name.removeprefix("conf-")
        if feature not in rows.confidence:
            raise ConfigError(f"{rows.task} has no confidence feature {feature!r}; choose from "
                              f"{', '.join(rows.confidence) or 'none (prompt-only labels)'}.")
        values = np.array([f[feature] for f in rows.features])
        return values if feature in _UNSURE else -values
    if name in LEARNED:
        return cross_fit(name, rows, folds)
    raise ConfigError(f"Unknown router {name!r}; choose from {', '.join(router_names(rows))}.",
                      param="router")


def evaluate_routers(rows: TaskRows, names: Sequence[str] | None = None, folds: int = 5,
                     curve_points: int = 101, fixed: Mapping[str, LinearRouter] | None = None
                     ) -> dict[str, Any]:
    """Every router's summary and curve (sampled at ``curve_points`` fractions).

    ``fixed`` adds already trained routers (e.g. the shipped ones), scored as they are."""
    names = list(names) if names else router_names(rows)
    names += list(fixed or {})
    grid = np.linspace(0, 1, curve_points)
    out: dict[str, Any] = {
        "task": rows.task,
        "n_items": len(rows.items),
        "local_accuracy": round(float(rows.local_ok.mean()), 4),
        "cloud_accuracy": round(float(rows.cloud_ok.mean()), 4),
        "oracle_accuracy": round(float(np.maximum(rows.local_ok, rows.cloud_ok).mean()), 4),
        "folds": folds,
        "routers": {},
    }
    for name in names:
        if name == "random":
            summary = random_baseline(rows.local_ok, rows.cloud_ok)
            curve = [round(float(rows.local_ok.mean() + f * (rows.cloud_ok.mean()
                                                               - rows.local_ok.mean())), 4)
                     for f in grid]
        elif fixed and name in fixed:
            scores = fixed[name].scores(fixed[name].matrix(rows.features))
            summary = score_router(scores.tolist(), rows.local_ok.tolist(),
                                   rows.cloud_ok.tolist())
            summary["knows"] = round(float(np.mean(
                [fixed[name].knows(f) for f in rows.features])), 4)
            c = deferral_curve(scores, rows.local_ok, rows.cloud_ok)
            curve = [round(c.quality_at(float(f)), 4) for f in grid]
        else:
            scores = router_scores(name, rows, folds)
            summary = score_router(scores.tolist(), rows.local_ok.tolist(),
                                   rows.cloud_ok.tolist())
            c = deferral_curve(scores, rows.local_ok, rows.cloud_ok)
            curve = [round(c.quality_at(float(f)), 4) for f in grid]
        out["routers"][name] = {**summary, "curve": curve}
    out["curve_fractions"] = [round(float(f), 4) for f in grid]
    return out


def train_router(name: str, rows: Sequence[TaskRows], subset: Sequence[str] | None = None,
                 c: float = DEFAULT_C) -> LinearRouter:
    """One router trained on every item of the given tasks (for the gateway)."""
    if name not in LEARNED:
        raise ConfigError(f"Only learned routers can be trained: {', '.join(LEARNED)}.")
    features = learned_features(name, rows[0])
    if subset:
        unknown = sorted(set(subset) - set(features))
        if unknown:
            raise ConfigError(f"The {name} router has no feature {', '.join(unknown)}; choose "
                              f"from {', '.join(features)}.", param="features")
        features = tuple(subset)
    if any(learned_features(name, r) != learned_features(name, rows[0]) for r in rows):
        raise ConfigError(f"The {name!r} router needs the same features in every task; "
                          "do not mix multiple-choice and generation tasks.")
    if name == "combined":
        raise ConfigError("Train the gateway's combined policy as two routers: `--router "
                          "prompt` and `--router cascade` (calibrate puts them together).")
    feats = [f for r in rows for f in r.features]
    gains = np.concatenate([r.gains for r in rows])
    meta = {
        "router": name,
        "tasks": [r.task for r in rows],
        "n_items": len(feats),
        "trained_items_sha256": hashlib.sha256(
            "".join(sorted(it.key for r in rows for it in r.items)).encode()
        ).hexdigest(),
        "c": c,
    }
    return LinearRouter.fit(feats, gains, features, c, meta)


def plot_curves(result: Mapping[str, Any], path: Any, routers: Sequence[str] | None = None
                ) -> None:
    """Quality vs cloud-call fraction for each router, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not routers:  # the baselines, the learned routers and the best single statistic
        stats = [n for n in result["routers"] if n.startswith("conf-")]
        best = sorted(stats, key=lambda n: -result["routers"][n]["apgr"])[:1]
        routers = ["random", "oracle", *LEARNED, *best]
    fig, ax = plt.subplots(figsize=(7, 5))
    x = np.asarray(result["curve_fractions"]) * 100
    for name, r in result["routers"].items():
        if name not in routers:
            continue
        style = {"random": ":", "oracle": "--"}.get(name, "-")
        ax.plot(x, np.asarray(r["curve"]) * 100, style,
                label=f"{name} (APGR {r['apgr']:.2f}, CPT50 {r['cpt50'] * 100:.0f}%)")
    ax.axhline(result["local_accuracy"] * 100, color="grey", lw=0.5)
    ax.axhline(result["cloud_accuracy"] * 100, color="grey", lw=0.5)
    ax.set_xlabel("cloud calls (% of requests)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{result['task']}: quality vs cloud-call fraction ({result['n_items']} items)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
