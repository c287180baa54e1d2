"""Routing: metrics, learned routers, signals, the policy's gates, device state, calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tandem.errors import ConfigError
from tandem.routing.calibrate import read_prompts
from tandem.routing.device import DeviceLimits, DeviceMonitor, DeviceState, read_thermal
from tandem.routing.evaluate import build_rows, cross_fit, evaluate_routers, fold_of
from tandem.routing.metrics import auroc, deferral_curve, oracle_scores, random_baseline
from tandem.routing.model import LinearRouter, threshold_for_rate
from tandem.routing.policy import Action, RequestContext, RoutingConfig, RoutingPolicy, ScoredRouter
from tandem.routing.signals import (
    PromptIndex,
    RunningConfidence,
    choice_confidence,
    generation_confidence,
    prompt_features,
)
from tandem.routing.tasks import Item, ItemCache, lambada_word, load_task


def rule(feature: str, weight: float) -> LinearRouter:
    """A one-feature router: score = sigmoid(weight * feature)."""
    return LinearRouter((feature,), np.zeros(1), np.ones(1), np.array([[weight]]), np.zeros(1),
                        (0, 1))


# -- metrics ------------------------------------------------------------------------------------


def test_oracle_beats_random_and_random_is_a_half() -> None:
    rng = np.random.default_rng(1)
    lo = (rng.random(400) < 0.4).astype(int)
    cl = (rng.random(400) < 0.6).astype(int)
    oracle = deferral_curve(oracle_scores(lo, cl), lo, cl)
    assert oracle.apgr() > 1.0
    assert oracle.quality.max() == pytest.approx(np.maximum(lo, cl).mean())
    assert random_baseline(lo, cl, runs=100)["apgr"] == pytest.approx(0.5, abs=0.03)
    # A router that cannot tell items apart (one tied group) is exactly the straight line.
    flat = deferral_curve(np.zeros(400), lo, cl)
    assert flat.apgr() == pytest.approx(0.5)
    assert flat.cpt(0.5) == pytest.approx(0.5)


def test_curve_end_points_and_cpt() -> None:
    lo = np.array([1, 0, 0, 1])
    cl = np.array([1, 1, 1, 0])
    c = deferral_curve([0.1, 0.9, 0.8, 0.0], lo, cl)  # sends the two gains first
    assert (c.local, c.cloud) == (0.5, 0.75)
    assert c.quality[0] == 0.5 and c.quality[-1] == 0.75
    assert c.quality_at(0.5) == 1.0
    assert c.cpt(0.5) == pytest.approx(0.125)  # half the gap after half an item
    assert c.cpt(1.0) == pytest.approx(0.25)


def test_auroc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(2)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.integers(0, 2, 60).astype(bool)
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert auroc(s, y) == pytest.approx(np.mean(pairs))


# -- learned routers -----------------------------------------------------------------------------


def test_linear_router_learns_the_gain_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=600)
    gains = np.where(x > 0.5, 1, np.where(x < -0.5, -1, 0))
    rows = [{"x": float(v), "noise": float(rng.normal())} for v in x]
    router = LinearRouter.fit(rows, gains, ("x", "noise"))
    assert router.score({"x": 2.0, "noise": 0.0}) > 0.5
    assert router.score({"x": -2.0, "noise": 0.0}) < -0.5
    router.save(tmp_path / "r.json")
    again = LinearRouter.load(tmp_path / "r.json")
    assert again.score({"x": 0.3, "noise": 1.0}) == pytest.approx(router.score({"x": 0.3,
                                                                               "noise": 1.0}))
    with pytest.raises(ConfigError, match="feature 'noise'"):
        again.score({"x": 1.0})


def test_router_file_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="train-router"):
        LinearRouter.load(bad)
    bad.write_text("not json")
    with pytest.raises(ConfigError, match="not JSON"):
        LinearRouter.load(bad)
    with pytest.raises(ConfigError, match="all the same"):
        LinearRouter.fit([{"x": 1.0}, {"x": 2.0}], [0, 0], ("x",))


def test_threshold_for_rate_sends_that_share() -> None:
    scores = np.arange(100, dtype=float)
    for rate in (0.0, 0.1, 0.3, 0.77, 1.0):
        cut = threshold_for_rate(scores, rate)
        assert (scores > cut).mean() == pytest.approx(rate)
    with pytest.raises(ConfigError):
        threshold_for_rate(scores, 1.5)


# -- signals -----------------------------------------------------------------------------------


def test_generation_confidence_statistics() -> None:
    lps = [-0.1, -2.0, -0.3, -0.05]
    f = generation_confidence(lps, " Paris is", PromptIndex.of("The capital: Paris, paris"))
    assert f["lp_min"] == -2.0 and f["lp_first"] == -0.1 and f["lp_last"] == -0.05
    assert f["lp_mean"] == pytest.approx(np.mean(lps))
    assert f["lp_q10"] < f["lp_q25"] < f["lp_mean"] or f["lp_q25"] >= f["lp_q10"]
    assert f["copied"] == 0.5  # "paris" is in the prompt, "is" is not
    assert f["function_words"] == 0.5 and f["capitalized"] == 0.5
    assert f["copy_count"] == pytest.approx(np.log1p(2) / 2)  # twice, and not at all
    assert f["copy_recency"] == pytest.approx((np.log1p(1) + np.log1p(4) + 1) / 2)
    running = RunningConfidence("What is the capital? Paris")
    for lp, t in zip(lps, [" Paris", " is", " nice", "."], strict=True):
        running.add(lp, t)
    running.add(float("nan"))  # not counted
    assert len(running) == 4
    assert running.features()["lp_mean"] == pytest.approx(np.mean(lps))


def test_choice_confidence_margin_and_agreement() -> None:
    sure = choice_confidence([-1.0, -20.0, -20.0], [4, 4, 4], [-10.0, -10.0, -10.0])
    unsure = choice_confidence([-5.0, -5.2, -5.1], [4, 4, 4], [-1.0, -9.0, -9.0])
    assert sure["p_max"] > 0.99 > unsure["p_max"]
    assert sure["margin"] > unsure["margin"]
    assert sure["entropy"] < unsure["entropy"]
    assert sure["pmi_agrees"] == 1.0 and unsure["pmi_agrees"] == 0.0


def test_prompt_features_see_structure_not_words() -> None:
    maths = prompt_features("Calculate 12 * 7 + 3 = ?\nA. 87\nB. 84\nC. 91\nD. 80")
    prose = prompt_features("Which of these is NOT a mammal?\nA. whale\nB. bat\nC. trout")
    assert maths["math_rate"] > prose["math_rate"] and maths["compute_verb"] == 1.0
    assert prose["negation"] == 1.0 and maths["choice_digit_rate"] > prose["choice_digit_rate"]
    assert prompt_features("")["log_chars"] == 0.0


@pytest.mark.parametrize(("prompt", "kind"), [
    ("Write a C++ program to find the nth Fibonacci number.", "asks_code"),
    ("Implement a function that merges two sorted arrays.", "asks_code"),
    ("Fix the bug in this JavaScript snippet.", "asks_code"),
    ("Write a short poem about autumn.", "asks_creative"),
    ("Pretend to be a pirate and greet me.", "asks_creative"),
    ("Draft an email to my landlord about the heating.", "asks_creative"),
    ("Explain inflation in simple terms.", "asks_explanation"),
    ("Give me three tips for sleeping better.", "asks_explanation"),
    ("Hi! How are you today?", None),
    ("What is 17 times 23?", None),
])
def test_prompt_features_name_the_kind_of_task(prompt: str, kind: str | None) -> None:
    f = prompt_features(prompt)
    kinds = {k for k in ("asks_code", "asks_creative", "asks_explanation") if f[k] == 1.0}
    assert kinds == ({kind} if kind else set())
    # a word inside another word is not the word ("encoded" is not "code", "roles" not "role")
    assert prompt_features("The message was encoded; the roles are fixed.")["asks_code"] == 0.0


def test_lambada_word() -> None:
    assert lambada_word(' "Gabriel," he said') == "Gabriel"
    assert lambada_word("  signs.") == "signs"
    assert lambada_word("") == ""


# -- tasks and evaluation -------------------------------------------------------------------


def test_mmlu_folds_are_by_subject(tmp_path: Path) -> None:
    rows = ["prompt,weak-model,strong-model"]
    rows += [f'"Q{i}: what is {i} + {i}?\nA. {2 * i}\nB. {i}\nAnswer:",{i % 3 == 0},True'
             for i in range(30)]
    for subject in ("algebra", "history", "law", "music"):
        (tmp_path / f"mmlu_{subject}.csv").write_text("\n".join(rows) + "\n")
    items = load_task("mmlu", tmp_path)
    assert len(items) == 120 and {it.group for it in items} == {"algebra", "history", "law",
                                                                 "music"}
    assert len({fold_of(it, 4) for it in items if it.group == "law"}) == 1
    result = evaluate_routers(build_rows("mmlu", items), ["random", "oracle", "prompt"], folds=2)
    assert set(result["routers"]) == {"random", "oracle", "prompt"}
    assert result["routers"]["oracle"]["apgr"] > result["routers"]["random"]["apgr"]
    (tmp_path / "mmlu_bad.csv").write_text("prompt,a,b\nq,maybe,True\n")
    with pytest.raises(ConfigError, match="True or False"):
        load_task("mmlu", tmp_path)


def test_cross_fitting_never_scores_an_item_with_a_router_that_saw_it() -> None:
    # Labels that are pure noise: a router that memorised its items would look good in-sample.
    rng = np.random.default_rng(4)
    items = [Item(f"{i:016x}", f"q {i}", {"choices": ["a", "b"], "gold": 0}) for i in range(400)]
    local = {it.key: {"ll": list(rng.normal(size=2)), "ll_uncond": [0.0, 0.0], "n_bytes": [2, 2],
                      "n_tokens": [1, 1],
                      "correct": int(rng.random() < 0.3)} for it in items}
    cloud = {it.key: {"correct": int(rng.random() < 0.7)} for it in items}
    rows = build_rows("arc_easy", items, local, cloud)
    scores = cross_fit("cascade", rows, folds=5)
    apgr = deferral_curve(scores, rows.local_ok, rows.cloud_ok).apgr()
    assert abs(apgr - 0.5) < 0.2


def test_item_cache_survives_a_cut_line(tmp_path: Path) -> None:
    cache = ItemCache(tmp_path, "ab" * 32, "lambada")
    cache.append("k1", {"correct": 1})
    with cache.path.open("a") as f:
        f.write('{"key": "k2", "corr')  # a run killed mid-write
    ItemCache(tmp_path, "ab" * 32, "lambada").append("k3", {"correct": 0})  # the next run
    assert ItemCache(tmp_path, "ab" * 32, "lambada").load() == {"k1": {"correct": 1},
                                                                "k3": {"correct": 0}}


def test_bad_task_data_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "arc.jsonl"
    f.write_text('{"query": "q", "choices": ["a"]}\n')
    with pytest.raises(ConfigError, match="gold"):
        load_task("arc_easy", f)
    with pytest.raises(ConfigError, match="Unknown task"):
        load_task("trivia", f)


# -- policy -------------------------------------------------------------------------------------


def combined(prompt_cut: float = 0.5, cascade_cut: float = 0.5) -> RoutingPolicy:
    return RoutingPolicy(RoutingConfig(
        mode="combined",
        prompt=ScoredRouter(rule("log_chars", 1.0), prompt_cut),
        cascade=ScoredRouter(rule("lp_mean", -1.0), cascade_cut),
        cascade_tokens=4, hysteresis=0.05, device_bias=0.3,
    ))


def ctx(**kw: object) -> RequestContext:
    base: dict[str, object] = dict(prompt="hi", prompt_tokens=10, local_n_ctx=100,
                                   cloud_configured=True, cloud_up=True)
    base.update(kw)
    return RequestContext(**base)  # type: ignore[arg-type]


def test_gates_come_before_the_routers() -> None:
    p = combined()
    assert p.decide(ctx(prompt_tokens=100)).reason == "exceeds_local_context"
    assert p.decide(ctx(prompt_tokens=100, trims=True, cloud_up=False)).action == Action.LOCAL
    assert p.decide(ctx(cloud_configured=False, cloud_up=False)).reason == "cloud_not_configured"
    assert p.decide(ctx(cloud_up=False)).reason == "cloud_unavailable"
    d = p.decide(ctx(local_state="loading"))
    assert (d.action, d.reason) == (Action.CLOUD, "local_loading")


def test_prompt_router_then_cascade() -> None:
    p = combined(prompt_cut=0.9)
    long = "x" * 5000  # sigmoid(log 5001) ≈ 0.9998
    d = p.decide(ctx(prompt=long))
    assert (d.action, d.reason) == (Action.CLOUD, "prompt_router") and d.scores["prompt"] > 0.9
    d = p.decide(ctx(prompt="hi"))
    assert (d.action, d.cascade_tokens) == (Action.CASCADE, 4)
    assert p.cascade_check(d, {"lp_mean": -3.0})[0] is True  # unsure: escalate
    assert p.cascade_check(d, {"lp_mean": 3.0})[0] is False


def test_device_pressure_and_hysteresis_shift_the_thresholds() -> None:
    p = combined(prompt_cut=0.9)
    hot = DeviceState(temperature_c=95.0)
    # log(3) -> sigmoid ≈ 0.75: under the cut alone, over it with the device's bias.
    assert p.decide(ctx(prompt="abc")).action == Action.CASCADE
    d = p.decide(ctx(prompt="abc", device=hot))
    assert (d.action, d.reason) == (Action.CLOUD, "prompt_router_device_hot")
    d_local = p.decide(ctx(prompt="hi", previous_tier="local"))
    d_cloud = p.decide(ctx(prompt="hi", previous_tier="cloud"))
    assert d_cloud.threshold_shift - d_local.threshold_shift == pytest.approx(0.1)
    # A borderline answer stays where the conversation already is.
    lp = 0.0  # sigmoid(0) = 0.5 = the cascade's cut
    assert p.cascade_check(d_cloud, {"lp_mean": lp})[0] is True
    assert p.cascade_check(d_local, {"lp_mean": lp})[0] is False
    local_first = RoutingPolicy(RoutingConfig())
    assert local_first.decide(ctx(device=hot)).reason == "device_hot"
    assert local_first.decide(ctx()).reason == "default_local"


def test_config_round_trip_and_errors(tmp_path: Path) -> None:
    cfg = combined().config
    cfg.save(tmp_path / "routing.json")
    again = RoutingConfig.load(tmp_path / "routing.json")
    assert again.mode == "combined" and again.cascade is not None
    assert again.cascade.threshold == cfg.cascade.threshold  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="needs a cascade router"):
        RoutingConfig(mode="cascade")
    (tmp_path / "x.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError, match="tandem calibrate"):
        RoutingConfig.load(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="Cannot read"):
        RoutingConfig.load(tmp_path / "missing.json")
    shipped = RoutingConfig.load()
    assert shipped.mode == "prompt"
    # both routers ship, each with its training range, so every mode can be switched on
    assert shipped.prompt is not None and shipped.prompt.router.support is not None
    assert shipped.cascade is not None and shipped.cascade.router.support is not None
    assert shipped.cascade.router.meta["cascade_tokens"] == shipped.cascade_tokens


# -- device -------------------------------------------------------------------------------------


def test_device_monitor_reads_injected_sensors_and_caches() -> None:
    now = [0.0]
    temps = [50.0]
    mon = DeviceMonitor(thermal=lambda: temps[0], battery=lambda: (15.0, False),
                        memory=lambda: 0.5, clock=lambda: now[0], ttl_s=1.0)
    assert mon.read().pressure(DeviceLimits()) == "battery_low"
    temps[0] = 90.0
    assert mon.read().temperature_c == 50.0  # cached
    now[0] = 2.0
    assert mon.read().pressure(DeviceLimits()) == "device_hot"
    mon2 = DeviceMonitor(thermal=lambda: None, battery=lambda: (None, None), memory=lambda: 0.5)
    mon2.record_decode(100, 1.0)
    mon2.record_decode(3, 1.0)  # too short to count
    assert mon2.read().pressure(DeviceLimits()) is None
    for _ in range(5):
        mon2.record_decode(20, 1.0)
    assert mon2.read().pressure(DeviceLimits()) == "local_throttled"


def test_read_thermal_takes_the_hottest_zone(tmp_path: Path) -> None:
    for i, milli in enumerate(("45000", "71500", "-273000", "junk")):
        (tmp_path / f"thermal_zone{i}").mkdir()
        (tmp_path / f"thermal_zone{i}" / "temp").write_text(milli)
    assert read_thermal(tmp_path) == 71.5
    assert read_thermal(tmp_path / "none") is None


def test_read_prompts_formats(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"turns": ["first", "second"]}\n{"prompt": "p2"}\nplain text line\n\n')
    assert read_prompts(f) == ["first", "p2", "plain text line"]
    f.write_text('{"other": 1}\n')
    with pytest.raises(ConfigError, match="no prompt field"):
        read_prompts(f)


# -- support: routers abstain outside their training data ----------------------------------------


def test_fit_records_the_training_range_and_it_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [{"a": float(a), "b": float(b)} for a, b in rng.normal(size=(400, 2))]
    gains = [int(r["a"] > 0) for r in rows]
    router = LinearRouter.fit(rows, gains, ("a", "b"))
    assert router.knows({"a": 0.1, "b": -0.2})
    assert router.knows({"a": 9.0, "b": 0.0})  # one feature outside is tolerated
    assert not router.knows({"a": 9.0, "b": -9.0})  # two are not
    router.save(tmp_path / "r.json")
    again = LinearRouter.load(tmp_path / "r.json")
    assert again.support is not None and router.support is not None
    assert np.allclose(again.support.low, router.support.low)
    assert not again.knows({"a": 9.0, "b": -9.0})


def test_a_router_without_a_recorded_range_knows_everything() -> None:
    assert rule("log_chars", 1.0).knows({"log_chars": 1e9})


def _outside_after(router: LinearRouter, low: float, high: float) -> LinearRouter:
    from tandem.routing.model import Support

    n = len(router.features)
    router.support = Support(np.full(n, low), np.full(n, high), tolerance=0)
    return router


def test_the_prompt_router_abstains_on_a_prompt_unlike_its_training() -> None:
    policy = RoutingPolicy(RoutingConfig(
        mode="combined",
        prompt=ScoredRouter(_outside_after(rule("log_chars", 1.0), 3.0, 9.0), 0.1),
        cascade=ScoredRouter(rule("lp_mean", -1.0), 0.5), cascade_tokens=4,
    ))
    d = policy.decide(ctx(prompt="Hi!"))  # log_chars 1.4: shorter than anything seen
    assert d.action == Action.CASCADE  # the score (0.8 > 0.1) would have escalated
    assert d.scores["prompt_abstained"] == 1.0 and d.scores["prompt"] > 0.1
    d = policy.decide(ctx(prompt="x" * 200))  # inside the range: the router decides
    assert (d.action, d.reason) == (Action.CLOUD, "prompt_router")
    only = policy.with_mode("prompt")
    d = only.decide(ctx(prompt="Hi!"))
    assert (d.action, d.reason) == (Action.LOCAL, "prompt_router_abstained")


def test_the_cascade_never_escalates_a_start_unlike_its_training() -> None:
    policy = RoutingPolicy(RoutingConfig(
        mode="cascade",
        cascade=ScoredRouter(_outside_after(rule("lp_mean", -1.0), -4.0, 0.0), 0.5),
        cascade_tokens=4,
    ))
    d = policy.decide(ctx())
    assert policy.cascade_check(d, {"lp_mean": -3.0})[0] is True  # unsure and known
    escalate, score = policy.cascade_check(d, {"lp_mean": -9.0})
    assert escalate is False and score > 0.5  # unsure, but never seen: stays local
    assert not policy.cascade_knows({"lp_mean": -9.0})
    assert policy.cascade_knows({"lp_mean": -1.0})


def test_a_fixed_router_is_scored_as_trained_with_its_abstention_share() -> None:
    rng = np.random.default_rng(5)
    items = [Item(f"{i:016x}", f"q {i}", {"choices": ["a", "b"], "gold": 0}) for i in range(200)]
    local = {it.key: {"ll": list(rng.normal(size=2)), "ll_uncond": [0.0, 0.0], "n_bytes": [2, 2],
                      "n_tokens": [1, 1], "correct": int(rng.random() < 0.3)} for it in items}
    cloud = {it.key: {"correct": int(rng.random() < 0.7)} for it in items}
    rows = build_rows("arc_easy", items, local, cloud)
    perfect = rows.gains.astype(float)  # a router that knows the labels: APGR near the oracle's
    for f, g in zip(rows.features, perfect, strict=True):
        f["label"] = g
    oracle_like = _outside_after(rule("label", 5.0), -0.5, 2.0)  # gains of -1 are "unknown"
    result = evaluate_routers(rows, ["random", "oracle"], folds=2,
                              fixed={"label-router": oracle_like})
    got = result["routers"]["label-router"]
    assert got["apgr"] > result["routers"]["random"]["apgr"] + 0.2
    assert got["knows"] == pytest.approx(float(np.mean(rows.gains >= 0)))
