"""Learned routers: a linear model over named features, trained offline, saved as JSON.

The model predicts, for one request, the probabilities that escalating to the cloud gains
(only the cloud answers well), loses (only the local model does), or changes nothing (both or
neither do); its score is the expected gain ``P(gain) - P(loss)``. Training on the gain rather
than on "the local model fails" matters: the items a small model fails are mostly the items a
larger one fails too, and a router that learns difficulty alone sends those to the cloud for
nothing (measured on MMLU: APGR below random).

Training uses scikit-learn's logistic regression; the saved artifact is plain JSON (feature
names, standardisation, coefficients), so loading it at gateway start-up needs neither
scikit-learn nor pickle, and a decision is one small matrix product.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tandem.errors import ConfigError

FORMAT = "tandem.router.v1"
SUPPORT_QUANTILE = 0.001  # the training box: each feature's 0.1% to 99.9% range
SUPPORT_TOLERANCE = 1  # features a known row may have outside the box


@dataclass(frozen=True)
class Support:
    """Where the router has seen data: each feature's range over its training rows.

    A row is *unknown* when more than ``tolerance`` of its features fall outside the range
    (the 0.1% and 99.9% quantiles of the training rows, widened by a tenth of their span). A
    linear model extrapolates without saying so: "Hi!" is shorter than any question it was
    trained on, and its score there is the intercept's guess, not a measurement. The router
    then abstains and leaves the decision to the next check.
    """

    low: NDArray[np.float64]
    high: NDArray[np.float64]
    tolerance: int = SUPPORT_TOLERANCE

    @classmethod
    def of(cls, x: NDArray[np.float64], tolerance: int = SUPPORT_TOLERANCE) -> Support:
        low = np.quantile(x, SUPPORT_QUANTILE, axis=0)
        high = np.quantile(x, 1 - SUPPORT_QUANTILE, axis=0)
        pad = (high - low) * 0.1
        return cls(low - pad, high + pad, tolerance)

    def outside(self, x: NDArray[np.float64]) -> NDArray[np.int64]:
        """How many of each row's features fall outside the training range."""
        counts: NDArray[np.int64] = ((x < self.low) | (x > self.high)).sum(axis=1)
        return counts

    def knows(self, x: NDArray[np.float64]) -> NDArray[np.bool_]:
        known: NDArray[np.bool_] = self.outside(x) <= self.tolerance
        return known

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low.tolist(), "high": self.high.tolist(),
                "tolerance": self.tolerance}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Support:
        return cls(np.asarray(data["low"], dtype=np.float64),
                   np.asarray(data["high"], dtype=np.float64), int(data["tolerance"]))


@dataclass
class LinearRouter:
    """Multinomial logistic regression over ``features``; classes are gains -1, 0, +1."""

    features: tuple[str, ...]
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    coef: NDArray[np.float64]  # (n_classes, n_features)
    intercept: NDArray[np.float64]  # (n_classes,)
    classes: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    support: Support | None = None  # None: no range recorded, every row is known

    def matrix(self, rows: Sequence[Mapping[str, float]]) -> NDArray[np.float64]:
        try:
            return np.array([[r[f] for f in self.features] for r in rows], dtype=np.float64)
        except KeyError as exc:
            raise ConfigError(f"The router needs the feature {exc.args[0]!r}, which this "
                              "request does not provide (wrong router for this task?).") from exc

    def scores(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Expected gain of escalating, one per row of ``x`` (raw features)."""
        z = (x - self.mean) / self.scale
        logits = z @ self.coef.T + self.intercept
        if logits.shape[1] == 1:  # two classes: scikit-learn keeps one row
            logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        out = np.zeros(len(x))
        for j, c in enumerate(self.classes):
            out += c * p[:, j]
        return out

    def score(self, row: Mapping[str, float]) -> float:
        return float(self.scores(self.matrix([row]))[0])

    def knows(self, row: Mapping[str, float]) -> bool:
        """Is ``row`` like the rows the router was trained on (see ``Support``)?"""
        return self.support is None or bool(self.support.knows(self.matrix([row]))[0])

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, float]], gains: ArrayLike,
            features: Sequence[str], c: float = 1.0, meta: dict[str, Any] | None = None
            ) -> LinearRouter:
        """Train on feature rows and each row's gain (cloud correct minus local correct)."""
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(gains, dtype=int)
        if len(set(y.tolist())) < 2:
            raise ConfigError("Training needs items where escalating helps and where it does "
                              "not; these labels are all the same.")
        probe = cls(tuple(features), np.zeros(len(features)), np.ones(len(features)),
                    np.zeros((1, len(features))), np.zeros(1), (0,))
        x = probe.matrix(rows)
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-9] = 1.0
        model = LogisticRegression(C=c, max_iter=5000)
        model.fit((x - mean) / scale, y)
        return cls(tuple(features), mean, scale, np.asarray(model.coef_, dtype=np.float64),
                   np.asarray(model.intercept_, dtype=np.float64),
                   tuple(int(k) for k in model.classes_), dict(meta or {}), Support.of(x))

    # -- artifact -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "features": list(self.features),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "classes": list(self.classes),
            "meta": self.meta,
            "support": None if self.support is None else self.support.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LinearRouter:
        if data.get("format") != FORMAT:
            raise ConfigError(f"Not a router file (format {data.get('format')!r}, expected "
                              f"{FORMAT!r}); make one with `tandem train-router`.")
        router = cls(
            tuple(data["features"]),
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["scale"], dtype=np.float64),
            np.asarray(data["coef"], dtype=np.float64),
            np.asarray(data["intercept"], dtype=np.float64),
            tuple(int(c) for c in data["classes"]),
            dict(data.get("meta", {})),
            Support.from_json(data["support"]) if data.get("support") else None,
        )
        n = len(router.features)
        support = router.support
        if router.coef.shape[1:] != (n,) or router.mean.shape != (n,) or (
                support is not None and support.low.shape != (n,)):
            raise ConfigError("The router file is inconsistent: coefficients and features differ.")
        return router

    def save(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> LinearRouter:
        return cls.from_json(read_json(path, "router file", "router"))


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON, atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def read_json(path: Path, what: str, param: str) -> Any:
    """JSON from ``path``; an unreadable or malformed file is a clear ``ConfigError``."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"Cannot read the {what} {path}: {exc.strerror}.",
                          param=param) from exc
    except ValueError as exc:
        raise ConfigError(f"The {what} {path} is not JSON ({exc}).", param=param) from exc


def threshold_for_rate(scores: ArrayLike, cloud_rate: float) -> float:
    """The score cut-off that sends ``cloud_rate`` of these scores to the cloud (score > cut)."""
    if not 0.0 <= cloud_rate <= 1.0:
        raise ConfigError(f"A cloud rate is a fraction in [0, 1], not {cloud_rate}.")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if len(s) == 0:
        raise ConfigError("Calibration needs at least one prompt.")
    if cloud_rate <= 0:
        return math.inf
    if cloud_rate >= 1:
        return -math.inf
    k = len(s) - round(cloud_rate * len(s))  # scores above s[k-1] escalate
    k = min(max(k, 1), len(s) - 1)
    return float((s[k - 1] + s[k]) / 2)
