"""Text completions and code infill through a real `tandem serve` with the official SDK: the
local SmolLM2 continues plain prompts (its KV cache reused between keystrokes), and fill in the
middle, which SmolLM2 cannot do (no FIM tokens), goes to the shipped Qwen2.5-Coder stand-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tandem.catalog import bundled_path
from tandem.cloud.standin import StandinCloud
from tests.integration.conftest import SHIPPED_STANDIN
from tests.integration.gateway_proc import gateway_process

CODE = "def add(a, b):\n    return "
AFTER = "\n\n\nprint(add(2, 3))\n"
LOCAL = {"tandem": {"route": "local"}}


@pytest.fixture(scope="module")
def local_url() -> Iterator[str]:
    with gateway_process(None) as url:
        yield url


@pytest.fixture(scope="module")
def local(local_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=local_url, api_key="unused", max_retries=0, timeout=120)


def test_a_greedy_completion_equals_llama_cpp_python_on_the_same_model(
    local: openai.OpenAI,
) -> None:
    from llama_cpp import Llama

    prompt = "The three primary colours are"
    raw = local.completions.with_raw_response.create(
        model="tandem", prompt=prompt, max_tokens=12, temperature=0.0, extra_body=LOCAL
    )
    assert raw.headers["x-tandem-route"] == "local"
    done = raw.parse()
    assert done.object == "text_completion"
    llm = Llama(model_path=str(bundled_path("smollm2")), n_ctx=512, n_threads=2, verbose=False)
    try:
        bare = llm.create_completion(prompt, max_tokens=12, temperature=0.0)
    finally:
        llm.close()
    assert done.choices[0].text == bare["choices"][0]["text"]  # type: ignore[index]
    assert done.usage is not None and done.usage.completion_tokens == 12


def test_streamed_completion_matches_the_whole_one(local: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": "tandem", "prompt": CODE, "max_tokens": 10}
    whole = local.completions.create(**args, temperature=0.0, extra_body=LOCAL)
    stream = local.completions.create(**args, temperature=0.0, stream=True, extra_body=LOCAL)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_consecutive_keystrokes_reuse_the_kv_cache(local_url: str) -> None:
    prefix = "".join(f"value_{i} = compute({i}, scale=2)\n" for i in range(60))
    cached = []
    with httpx.Client(timeout=120) as http:
        for typed in ("r", "re", "res"):
            body = {"prompt": prefix + typed, "max_tokens": 4, "temperature": 0.0, **LOCAL}
            usage = http.post(f"{local_url}/completions", json=body).json()["usage"]
            cached.append((usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]))
    for prompt_tokens, reused in cached[1:]:
        assert reused >= prompt_tokens - 3  # only the changed last tokens are prefilled
    assert cached[0][0] > 500


def test_fill_in_the_middle_without_a_fim_tier_is_a_clear_400(local: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        local.completions.create(model="tandem", prompt=CODE, suffix=AFTER, max_tokens=8)
    body: Any = caught.value.body
    assert body["code"] == "fim_unsupported"
    assert "no fill-in-the-middle tokens" in body["message"]


@pytest.fixture(scope="module")
def fim_url() -> Iterator[str]:
    with StandinCloud(SHIPPED_STANDIN, port=0, n_threads=2) as cloud:
        settings = cloud.gateway_settings()
        assert settings["cloud_fim"], "the shipped stand-in model has FIM tokens"
        env = {
            "TANDEM_CLOUD_DIALECT": "llama_cpp",
            "TANDEM_CLOUD_FIM": "true",
            "TANDEM_CLOUD_FIM_TOKENS": json.dumps(settings["cloud_fim_tokens"]),
        }
        with gateway_process(cloud.base_url, **env) as url:
            yield url


def test_fim_goes_to_the_fim_capable_stand_in(fim_url: str) -> None:
    client = openai.OpenAI(base_url=fim_url, api_key="unused", max_retries=0, timeout=120)
    raw = client.completions.with_raw_response.create(
        model="tandem", prompt=CODE, suffix=AFTER, max_tokens=8, temperature=0.0
    )
    assert (raw.headers["x-tandem-route"], raw.headers["x-tandem-reason"]) == (
        "cloud",
        "requires_fim",
    )
    # The middle between the two: only a prompt with the model's real FIM tokens gives it.
    assert raw.parse().choices[0].text.strip().startswith("a + b")


def test_llama_cpp_infill_requests_work_unchanged(fim_url: str) -> None:
    base = fim_url.removesuffix("/v1")
    body = {
        "id_slot": 0,
        "input_prefix": CODE,
        "input_suffix": AFTER,
        "input_extra": [{"filename": "util.py", "text": "def sub(a, b):\n    return a - b\n"}],
        "prompt": "",
        "n_predict": 8,
        "temperature": 0.0,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": True,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 1000,
        "response_fields": ["content", "timings/predicted_n"],
    }
    with httpx.Client(timeout=120) as http:
        whole = http.post(f"{base}/infill", json=body)
        assert whole.status_code == 200, whole.text
        assert whole.json()["content"].strip().startswith("a + b")
        assert set(whole.json()) <= {"content", "timings/predicted_n"}
        with http.stream("POST", f"{base}/infill", json={**body, "stream": True}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events and all(not e.get("stop") for e in events[:-1])
    assert events[-1]["stop"] is True
    assert "".join(e.get("content", "") for e in events).strip().startswith("a + b")


def test_plain_completions_reach_the_cloud_tier_streaming_and_not(standin_cloud: str) -> None:
    args: dict[str, Any] = {"model": "tandem", "prompt": CODE, "max_tokens": 10, "temperature": 0.0}
    direct = openai.OpenAI(base_url=standin_cloud, api_key="unused", max_retries=0, timeout=120)
    expected = direct.completions.create(**args).choices[0].text
    cloud = {"tandem": {"route": "cloud"}}
    with gateway_process(standin_cloud) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        raw = client.completions.with_raw_response.create(**args, extra_body=cloud)
        assert raw.headers["x-tandem-route"] == "cloud"
        whole = raw.parse()
        stream = client.completions.create(**args, stream=True, extra_body=cloud)
        chunks = list(stream)
    assert whole.choices[0].text == expected  # the cloud's own answer, unchanged
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_fim_streams_from_the_stand_in_through_the_sdk(fim_url: str) -> None:
    client = openai.OpenAI(base_url=fim_url, api_key="unused", max_retries=0, timeout=120)
    args: dict[str, Any] = {"prompt": CODE, "suffix": AFTER, "max_tokens": 8, "temperature": 0.0}
    whole = client.completions.create(model="tandem", **args).choices[0].text
    chunks = list(client.completions.create(model="tandem", stream=True, **args))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert whole.strip().startswith("a + b")
