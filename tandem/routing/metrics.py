"""Routing quality as RouteLLM measures it: the deferral curve, APGR and CPT.

A router gives each item a score (higher: send to the cloud sooner). Sending the top-scored
fraction ``f`` of items to the cloud and the rest to the local model gives a quality ``q(f)``;
``q(0)`` is local-only quality and ``q(1)`` cloud-only. The performance gap recovered is
``PGR(f) = (q(f) - q(0)) / (q(1) - q(0))``; APGR is its area over ``f`` in [0, 1] (random routing:
0.5; above 1 is possible when the tiers fail on different items); CPT(x) is the smallest cloud
fraction whose PGR reaches ``x``.

Tied scores are treated as one group routed together: between group boundaries the curve is the
straight line a random order within the group gives in expectation, so a router that cannot tell
items apart earns nothing from the order they happen to be listed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Curve:
    """Quality against cloud-call fraction, at the boundaries of tied-score groups."""

    fraction: FloatArray  # from 0 to 1
    quality: FloatArray
    local: float  # q(0)
    cloud: float  # q(1)

    @property
    def pgr(self) -> FloatArray:
        gap = self.cloud - self.local
        if gap == 0:
            return np.zeros_like(self.quality)
        return (self.quality - self.local) / gap

    def apgr(self) -> float:
        return float(np.trapezoid(self.pgr, self.fraction))

    def cpt(self, target: float) -> float:
        """The smallest cloud fraction that recovers ``target`` of the gap (1.0 if none does)."""
        pgr = self.pgr
        hit = np.nonzero(pgr >= target - 1e-12)[0]
        if len(hit) == 0:
            return 1.0
        i = int(hit[0])
        if i == 0:
            return 0.0
        f0, f1, p0, p1 = self.fraction[i - 1], self.fraction[i], pgr[i - 1], pgr[i]
        return float(f0 + (target - p0) / (p1 - p0) * (f1 - f0))

    def quality_at(self, fraction: float) -> float:
        return float(np.interp(fraction, self.fraction, self.quality))

    def summary(self) -> dict[str, float]:
        return {
            "apgr": round(self.apgr(), 4),
            "cpt50": round(self.cpt(0.5), 4),
            "cpt80": round(self.cpt(0.8), 4),
            "quality_local": round(self.local, 4),
            "quality_cloud": round(self.cloud, 4),
            "quality_at_30pct": round(self.quality_at(0.3), 4),
            "best_quality": round(float(self.quality.max()), 4),
        }


def deferral_curve(scores: ArrayLike, local_ok: ArrayLike, cloud_ok: ArrayLike) -> Curve:
    """The curve for routing the highest scores to the cloud first."""
    s = np.asarray(scores, dtype=np.float64)
    lo = np.asarray(local_ok, dtype=np.float64)
    cl = np.asarray(cloud_ok, dtype=np.float64)
    n = len(s)
    if n == 0 or not (len(lo) == len(cl) == n):
        raise ValueError("scores and both tiers' results must be non-empty and equally long")
    order = np.argsort(-s, kind="stable")
    gain = (cl - lo)[order]
    sorted_s = s[order]
    # Indexes where a tied-score group ends (the curve's vertices).
    ends = np.nonzero(np.diff(sorted_s) != 0)[0] + 1
    cuts = np.concatenate([[0], ends, [n]])
    cum = np.concatenate([[0.0], np.cumsum(gain)])[cuts]
    local = float(lo.mean())
    return Curve(cuts / n, local + cum / n, local, float(cl.mean()))


def auroc(scores: ArrayLike, failed: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` for predicting ``failed`` (ties count half)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(failed, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    # Mann-Whitney U from average ranks (ties share their rank).
    ranks = _average_ranks(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _average_ranks(values: FloatArray) -> FloatArray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_v = values[order]
    starts = np.concatenate([[0], np.nonzero(np.diff(sorted_v) != 0)[0] + 1])
    stops = np.concatenate([starts[1:], [len(values)]])
    for a, b in zip(starts, stops, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2  # 1-based average rank of the tie group
    return ranks


def oracle_scores(local_ok: ArrayLike, cloud_ok: ArrayLike) -> FloatArray:
    """Scores of the oracle: items only the cloud gets right first, those only local gets last."""
    lo = np.asarray(local_ok, dtype=np.float64)
    cl = np.asarray(cloud_ok, dtype=np.float64)
    return cl - lo


def random_baseline(local_ok: ArrayLike, cloud_ok: ArrayLike, runs: int = 200,
                    seed: int = 0) -> dict[str, float]:
    """APGR and CPTs of random routing: mean and standard deviation over ``runs`` orders."""
    rng = np.random.default_rng(seed)
    n = len(np.asarray(local_ok))
    rows = []
    for _ in range(runs):
        c = deferral_curve(rng.permutation(n).astype(float), local_ok, cloud_ok)
        rows.append((c.apgr(), c.cpt(0.5), c.cpt(0.8)))
    arr = np.array(rows)
    return {
        "apgr": round(float(arr[:, 0].mean()), 4),
        "apgr_std": round(float(arr[:, 0].std()), 4),
        "cpt50": round(float(arr[:, 1].mean()), 4),
        "cpt80": round(float(arr[:, 2].mean()), 4),
    }


def score_router(scores: Sequence[float], local_ok: Sequence[int], cloud_ok: Sequence[int]
                 ) -> dict[str, Any]:
    """A router's summary on a set of items, AUROC of predicting a local failure included."""
    curve = deferral_curve(scores, local_ok, cloud_ok)
    out: dict[str, Any] = curve.summary()
    out["auroc_local_fails"] = round(auroc(scores, 1 - np.asarray(local_ok)), 4)
    return out
