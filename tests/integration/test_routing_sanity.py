"""Routing a person would agree with: the shipped config, the shipped stand-in, real traffic.

Small talk stays on the device; maths, reasoning and coding requests escalate at least twice
as often as writing, roleplay and humanities ones (where RouteLLM found the strong model's
gain concentrated). The prompts are hand-written (tests/data), not the data the routers were
trained or calibrated on.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tandem.cloud.standin import StandinCloud

from .conftest import SHIPPED_STANDIN
from .gateway_proc import gateway_process

DATA = Path(__file__).parents[1] / "data"
HARD = ("math", "reasoning", "coding")
OPEN = ("writing", "roleplay", "humanities")


@pytest.fixture(scope="module")
def shipped_gateway() -> Iterator[str]:
    with StandinCloud(SHIPPED_STANDIN, port=0) as cloud, gateway_process(cloud.base_url) as url:
        yield url


def route(url: str, prompt: str) -> tuple[str, str]:
    r = httpx.post(f"{url}/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": prompt}], "max_tokens": 20,
        "temperature": 0.0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].strip()
    return r.headers["x-tandem-route"], r.headers["x-tandem-reason"]


def test_small_talk_stays_local(shipped_gateway: str) -> None:
    prompts = (DATA / "small_talk.txt").read_text().splitlines()
    assert len(prompts) >= 40
    routes = {p: route(shipped_gateway, p) for p in prompts}
    escalated = {p: r for p, r in routes.items() if r[0] != "local"}
    assert len(escalated) <= 0.05 * len(prompts), escalated


def test_hard_requests_escalate_at_least_twice_as_often_as_open_ones(
    shipped_gateway: str,
) -> None:
    rows = [json.loads(line) for line in (DATA / "task_prompts.jsonl").read_text().splitlines()]
    sent: Counter[str] = Counter()
    cloud: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for row in rows:
        tier, reason = route(shipped_gateway, row["prompt"])
        group = "hard" if row["category"] in HARD else "open"
        assert row["category"] in HARD + OPEN
        sent[group] += 1
        cloud[group] += tier == "cloud"
        reasons[reason] += 1
    hard, open_ = cloud["hard"] / sent["hard"], cloud["open"] / sent["open"]
    assert hard >= 0.25, (hard, open_, reasons)  # the cloud is used where it helps
    assert hard >= 2 * open_, (hard, open_, reasons)
