"""Fuzz the HTTP API from its own OpenAPI schema against a real `tandem serve` process.

Schemathesis reads ``/openapi.json`` from the running gateway and Hypothesis drives its
generated requests (schema-valid ones and, where the operation has inputs to break, invalid
ones) at every operation. The contract checked for each response:

* no 5xx, except a deliberate 503 that tells the client when to retry (``Retry-After``);
* every error (4xx, and the tolerated 503) is OpenAI-shaped JSON: ``{"error": {"message": str}}``;
* a streamed answer runs to ``data: [DONE]`` without an in-band internal error.

A short list of hand-picked requests (routing, sessions, streaming, limits) that random
generation seldom reaches goes through the same checks. Afterwards the same process must still
be alive, ``/healthz`` must answer 200 and a plain chat request must still be answered; the
server log must hold no traceback.

The gateway runs with a small context and ``max_tokens`` limit (fuzzed requests that ask for
long answers get a quick 400) and without a cloud tier. Hypothesis is derandomized, so every
run sends the same requests.

Schemathesis' own pytest loader (``schemathesis.pytest.from_fixture``) cannot run under
pytest 9 (it sets ``Function._nodeid``, which pytest 9 removed), so the operations are listed
here, checked against the live schema, and fuzzed with ``APIOperation.as_strategy`` + ``@given``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.integration.gateway_proc import GatewayServer, gateway_server

pytestmark = pytest.mark.timeout(300)

MAX_EXAMPLES = 50  # per operation and generation mode
REQUEST_TIMEOUT_S = 30.0  # a request that hangs this long fails the run
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
CHAT_EXAMPLES = 150  # the richest input, and cheap to answer with max_tokens <= 8
# (method, path, mode, examples). Negative mode only where the operation has an input whose
# schema can be violated: a string path parameter, or an operation without inputs, has none.
FUZZED = [
    ("POST", "/v1/chat/completions", POSITIVE, CHAT_EXAMPLES),
    ("POST", "/v1/chat/completions", NEGATIVE, MAX_EXAMPLES),
    ("POST", "/v1/completions", POSITIVE, MAX_EXAMPLES),
    ("POST", "/v1/completions", NEGATIVE, MAX_EXAMPLES),
    ("POST", "/infill", POSITIVE, MAX_EXAMPLES),
    ("POST", "/infill", NEGATIVE, MAX_EXAMPLES),
    ("GET", "/v1/sessions", POSITIVE, MAX_EXAMPLES),
    ("GET", "/v1/sessions", NEGATIVE, MAX_EXAMPLES),
    ("GET", "/v1/sessions/{session_id}", POSITIVE, MAX_EXAMPLES),
    ("DELETE", "/v1/sessions/{session_id}", POSITIVE, MAX_EXAMPLES),
    ("GET", "/v1/models", POSITIVE, MAX_EXAMPLES),
    ("GET", "/healthz", POSITIVE, MAX_EXAMPLES),
    ("GET", "/metrics", POSITIVE, MAX_EXAMPLES),
]

HI = [{"role": "user", "content": "Say hi."}]
# Requests random generation reaches rarely: the routing, session, streaming and limit branches.
# They run in order, through the same checks (the session ones build on each other).
EDGE_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/chat/completions", {"body": {"messages": HI, "tandem": {"route": "cloud"}}}),
    (
        "POST",
        "/v1/chat/completions",
        {"body": {"messages": HI, "tandem": {"route": "cloud", "fallback": False}}},
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"body": {"messages": HI, "tandem": {"route": "cloud", "privacy": "local_only"}}},
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"body": {"messages": [{"role": "user", "content": "word " * 4000}]}},
    ),
    (
        "POST",
        "/v1/chat/completions",
        {
            "body": {
                "messages": [
                    {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                    *HI,
                ],
                "stream": True,
                "stream_options": {"include_usage": True},
                "logprobs": True,
                "top_logprobs": 20,
                "max_tokens": 8,
                "stop": ["", "\n", "\u0000", "."],
                "temperature": 0.0,
                "seed": -(2**63),
            }
        },
    ),
    ("POST", "/v1/chat/completions", {"body": {"messages": HI, "tandem": {"session_id": "fz-1"}}}),
    (
        "POST",
        "/v1/chat/completions",
        {"body": {"messages": HI, "stream": True, "tandem": {"session_id": "fz-1"}}},
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"body": {"messages": HI}, "headers": {"X-Session-Id": "fz-2"}},
    ),
    ("GET", "/v1/sessions", {"query": {"limit": 0}}),
    ("GET", "/v1/sessions", {"query": {"limit": -1}}),
    ("GET", "/v1/sessions/{session_id}", {"path_parameters": {"session_id": "fz-1"}}),
    ("DELETE", "/v1/sessions/{session_id}", {"path_parameters": {"session_id": "fz-1"}}),
    ("GET", "/v1/sessions/{session_id}", {"path_parameters": {"session_id": "fz-1"}}),
]


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayServer]:
    with gateway_server(
        None,
        TANDEM_MAX_TOKENS_LIMIT="8",
        TANDEM_DEFAULT_MAX_TOKENS="4",
        TANDEM_N_CTX="512",
    ) as server:
        yield server


def _root(server: GatewayServer) -> str:
    return server.url.removesuffix("/v1")


@pytest.fixture(scope="module")
def published_schema(gateway: GatewayServer) -> dict[str, Any]:
    """The OpenAPI document exactly as the running gateway serves it."""
    response = httpx.get(f"{_root(gateway)}/openapi.json", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def api_schema(gateway: GatewayServer, published_schema: dict[str, Any]) -> Any:
    config = schemathesis.Config.from_dict({"base-url": _root(gateway)})
    return schemathesis.openapi.from_dict(_hoist_body_defs(published_schema), config=config)


# -- the published schema ---------------------------------------------------------------------


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolves(document: dict[str, Any], ref: str) -> bool:
    if not ref.startswith("#/"):
        return True  # not a local pointer: out of scope here
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _hoist_body_defs(document: dict[str, Any]) -> dict[str, Any]:
    """A copy whose request-body ``$defs`` live in ``components/schemas``, refs rewritten.

    The chat request schema is attached through ``openapi_extra`` as Pydantic emits it: with
    its own ``$defs`` and ``#/$defs/...`` refs, which do not resolve from the document root.
    Schemathesis then skips the (optional) body entirely, so without this the fuzzer would only
    ever send bodiless chat requests. ``test_openapi_refs_resolve`` reports the defect itself.
    """
    fixed = copy.deepcopy(document)
    components = fixed.setdefault("components", {}).setdefault("schemas", {})
    for item in fixed.get("paths", {}).values():
        for operation in item.values():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                schema = media.get("schema", {})
                for name, definition in schema.pop("$defs", {}).items():
                    components.setdefault(name, definition)
    text = json.dumps(fixed).replace('"#/$defs/', '"#/components/schemas/')
    return json.loads(text)  # type: ignore[no-any-return]


def test_openapi_refs_resolve(published_schema: dict[str, Any]) -> None:
    """Every local ``$ref`` in the served document points at something in it."""
    dangling = sorted({r for r in _refs(published_schema) if not _resolves(published_schema, r)})
    assert not dangling, f"/openapi.json has $refs that do not resolve: {dangling}"


def test_fuzzed_operations_are_all_operations(api_schema: Any) -> None:
    """FUZZED covers every operation the gateway publishes, and no other."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    published = {(op.method.upper(), op.path) for op in operations}
    assert published == {(method, path) for method, path, _, _ in FUZZED}


# -- checks (plain functions: passing them to validate_response registers nothing globally) ----


def no_server_error(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """No 5xx, except 503 with Retry-After (the deliberate 'queue full, retry' answer)."""
    status = response.status_code
    if status == 503 and response.headers.get("retry-after"):
        return
    assert status < 500, f"server error {status}: {response.content[:500]!r}"


def openai_error_shape(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every error body is JSON with an ``error`` object that has a ``message`` string."""
    if response.status_code < 400:
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"{response.status_code} with a non-JSON body: {response.content[:500]!r}"
        ) from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"{response.status_code} without an 'error' object: {body!r}"
    assert isinstance(error.get("message"), str), f"error without a message string: {body!r}"


def stream_completes(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """A streamed 200 ends with ``data: [DONE]`` and reports no internal error in-band."""
    content_type = ",".join(response.headers.get("content-type", []))
    if response.status_code != 200 or "text/event-stream" not in content_type:
        return
    if response.stream_cut_short:
        return  # schemathesis stopped reading early: the end is not ours to judge
    text = response.content.decode("utf-8", "replace")
    assert text.rstrip().endswith("data: [DONE]"), f"the stream did not finish: {text[-500:]!r}"
    for line in text.splitlines():
        if line.startswith("data: {"):
            error = json.loads(line.removeprefix("data: ")).get("error")
            assert not (error and error.get("code") == "internal_error"), f"in-band: {line}"


CHECKS = [no_server_error, openai_error_shape, stream_completes]


# -- fuzzing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "mode", "examples"),
    FUZZED,
    ids=[f"{method} {path} {mode.value}" for method, path, mode, _ in FUZZED],
)
def test_api_fuzz(
    api_schema: Any, method: str, path: str, mode: GenerationMode, examples: int
) -> None:
    """Every generated request gets a non-5xx answer; errors have the OpenAI shape."""
    operation = api_schema[path][method]

    @settings(FUZZ_SETTINGS, max_examples=examples)
    @given(case=operation.as_strategy(mode))
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT_S)

    fuzz()


def test_edge_requests(api_schema: Any) -> None:
    """Hand-picked requests through the same checks; all of them run, failures are collected."""
    failures = []
    for i, (method, path, fields) in enumerate(EDGE_CASES):
        case = api_schema[path][method].Case(media_type="application/json", **fields)
        try:
            case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT_S)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is the latter
            failures.append(f"EDGE_CASES[{i}] {method} {path}:\n{exc}")
    assert not failures, "\n\n".join(failures)


def test_gateway_survives_fuzzing(gateway: GatewayServer) -> None:
    """Runs after the fuzz tests (file order) on the same process: it is alive and answers."""
    assert gateway.proc.poll() is None, f"the gateway exited: {gateway.log.read_text()[-3000:]}"
    root = _root(gateway)
    health = httpx.get(f"{root}/healthz", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"
    chat = httpx.post(
        f"{gateway.url}/chat/completions",
        json={"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4},
        timeout=60,
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["role"] == "assistant"


def test_server_log_has_no_traceback(gateway: GatewayServer) -> None:
    """Nothing the fuzzing sent raised an unhandled exception in the server (file order)."""
    log = gateway.log.read_text(errors="replace")
    where = log.find("Traceback")
    assert where < 0, f"the server log holds a traceback: {log[max(0, where - 500) :][:4000]}"
