"""Structured output through a real `tandem serve` and the official SDK, on both tiers: the
local SmolLM2 under llguidance's mask, the stand-in llama_cpp.server under its own grammar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel

from tests.integration.gateway_proc import gateway_process

PROMPT = "Extract the person as JSON: Maria Rossi is 31 years old and lives in Rome."
# JSON mode constrains the syntax only: as OpenAI advises, the prompt says which keys to write
# (asked for "the person as JSON", the 135M model lists aliases until max_tokens).
KEYED_PROMPT = 'Answer with a JSON object with the keys "name" and "age": Maria Rossi is 31.'


class Person(BaseModel):
    name: str
    age: int
    city: Literal["Rome", "Paris", "Berlin"]


@pytest.fixture(scope="module")
def client(standin_cloud: str) -> Iterator[openai.OpenAI]:
    with gateway_process(standin_cloud, TANDEM_CLOUD_DIALECT="llama_cpp") as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)


def route(tier: str) -> dict[str, Any]:
    return {"tandem": {"route": tier}}


@pytest.mark.parametrize("tier", ["local", "cloud"])
def test_sdk_parse_returns_the_model_on_both_tiers(client: openai.OpenAI, tier: str) -> None:
    raw = client.chat.completions.with_raw_response.parse(
        model="tandem",
        messages=[{"role": "user", "content": PROMPT}],
        response_format=Person,
        temperature=0.0,
        max_tokens=96,
        extra_body=route(tier),
    )
    assert raw.headers["x-tandem-route"] == tier
    completion = raw.parse()
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Person), completion.choices[0].message.content
    assert parsed.city in ("Rome", "Paris", "Berlin")


@pytest.mark.parametrize(
    ("tier", "kind"), [("local", "json_object"), ("local", "json_schema"), ("cloud", "json_schema")]
)
def test_streamed_json_parses(client: openai.OpenAI, tier: str, kind: str) -> None:
    response_format: Any = {"type": "json_object"}
    prompt = KEYED_PROMPT
    if kind == "json_schema":
        prompt = PROMPT
        schema = Person.model_json_schema()
        response_format = {"type": kind, "json_schema": {"name": "person", "schema": schema}}
    stream = client.chat.completions.create(
        model="tandem",
        messages=[{"role": "user", "content": prompt}],
        response_format=response_format,
        temperature=0.0,
        max_tokens=96,
        stream=True,
        extra_body=route(tier),
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop", text
    value = json.loads(text)
    if kind == "json_schema":
        Person.model_validate(value)
    else:
        assert isinstance(value, dict)


def test_json_cut_by_max_tokens_is_reported_as_length(client: openai.OpenAI) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model="tandem",
            messages=[{"role": "user", "content": PROMPT}],
            response_format=Person,
            temperature=0.0,
            max_tokens=3,
            extra_body=route("local"),
        )


def test_a_schema_that_cannot_be_enforced_is_a_400_naming_the_keyword(
    client: openai.OpenAI,
) -> None:
    schema = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tandem",
            messages=[{"role": "user", "content": PROMPT}],
            response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}},
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "response_format.json_schema.schema"
    assert "uniqueItems" in error["message"]
