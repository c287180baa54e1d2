"""The OpenAI-compatible HTTP server: FastAPI app factory, SSE streaming, one error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tandem.api import ChatCompletionRequest, invalid_request
from tandem.completions import (
    CompletionRequest,
    InfillLimits,
    InfillRequest,
    InfillResponseBuilder,
    TextResponseBuilder,
)
from tandem.errors import (
    AuthenticationError,
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    TandemError,
)
from tandem.events import Finish, TokenEvent, ToolCallDelta
from tandem.gateway import Gateway
from tandem.responses import Builder, ResponseBuilder
from tandem.sessions.service import SessionService
from tandem.sessions.store import check_session_id
from tandem.settings import Settings
from tandem.supersede import Lanes, limited
from tandem.tools import CallBuilder
from tandem.turn import GatewayEvent, RouteInfo

log = logging.getLogger("tandem.server")
Request_ = TypeVar("Request_", bound=BaseModel)


def create_app(settings: Settings, gateway: Gateway | None = None) -> FastAPI:
    """The gateway app. Without ``gateway``, builds the engine and cloud client from settings."""
    from tandem.runtime import Runtime

    check_exposure(settings)
    runtime = Runtime(settings, gateway)
    gw, sessions = runtime.gateway, runtime.sessions

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runtime:
            yield

    app = FastAPI(title="Tandem", version="0.1.0", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.gateway = gw
    app.state.sessions = sessions
    app.state.settings = settings
    _add_error_handlers(app, gw)
    _add_security(app, settings)
    _add_routes(app, gw, settings, sessions)
    return app


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if not _is_loopback(settings.host) and settings.api_key is None:
        raise ConfigError(
            f"Binding {settings.host} exposes the gateway to the network; set TANDEM_API_KEY "
            "(clients then send 'Authorization: Bearer <key>') or bind 127.0.0.1."
        )
    if settings.api_key is not None and len(settings.api_key.get_secret_value()) < 16:
        raise ConfigError("TANDEM_API_KEY is shorter than 16 characters; use a longer secret.")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- security ---------------------------------------------------------------------------------

OPEN_PATHS = frozenset({"/healthz"})  # liveness probes need no key


def _add_security(app: FastAPI, settings: Settings) -> None:
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Session-Id"],
            expose_headers=["X-Tandem-Route", "X-Tandem-Reason", "X-Session-Id"],
        )
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()

    @app.middleware("http")
    async def require_key(request: Request, call_next: Any) -> Response:
        if request.url.path in OPEN_PATHS or request.method == "OPTIONS":
            return await call_next(request)  # type: ignore[no-any-return]
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected):
            err = AuthenticationError(
                "Missing or wrong API key: send 'Authorization: Bearer <TANDEM_API_KEY>'."
            )
            return JSONResponse(
                err.to_openai(), status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return await call_next(request)  # type: ignore[no-any-return]


# -- routes -----------------------------------------------------------------------------------


def _add_routes(
    app: FastAPI, gw: Gateway, settings: Settings, sessions: SessionService | None
) -> None:
    _publish_request_schemas(app)
    infill_lanes = Lanes()  # a newer infill from the same editor supersedes the one running

    @app.post("/v1/chat/completions", openapi_extra=_body_schema("ChatCompletionRequest"))
    async def chat_completions(request: Request) -> Response:
        req = _parse(await _read_body(request, settings.max_body_bytes), ChatCompletionRequest)
        _check_limits(req, settings)
        turn = req.to_turn(
            settings.default_max_tokens, settings.max_tokens_limit, settings.privacy_default
        )
        session_id = _session_id(request.headers.get("x-session-id"), req.tandem.session_id)
        builder = ResponseBuilder(
            req.logprobs, bool(req.stream_options and req.stream_options.include_usage)
        )
        headers: dict[str, str] = {}
        if session_id is None:
            events = gw.stream(turn)
        else:
            events = _sessions(sessions).stream(session_id, turn)
            headers["X-Session-Id"] = session_id
        return await _respond(events, builder, req.stream, headers, gw)

    @app.post("/v1/completions", openapi_extra=_body_schema("CompletionRequest"))
    async def completions(request: Request) -> Response:
        req = _parse(await _read_body(request, settings.max_body_bytes), CompletionRequest)
        _no_session(request)
        _check_text(settings, prompt=req.text, suffix=req.suffix or "")
        turn = req.to_turn(settings.max_tokens_limit, settings.privacy_default)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        builder = TextResponseBuilder(req.logprobs, include_usage, req.text if req.echo else "")
        return await _respond(gw.stream(turn), builder, req.stream, {}, gw)

    @app.post("/infill", openapi_extra=_body_schema("InfillRequest"))
    async def infill(request: Request) -> Response:
        req = _parse(await _read_body(request, settings.max_body_bytes), InfillRequest)
        _no_session(request)
        _check_text(
            settings,
            input_prefix=req.input_prefix,
            input_suffix=req.input_suffix,
            prompt=req.prompt,
            **{f"input_extra.{i}.text": c.text for i, c in enumerate(req.input_extra)},
        )
        turn = req.to_turn(
            settings.default_max_tokens, settings.max_tokens_limit, settings.privacy_default
        )
        limits = InfillLimits(req.n_indent, req.t_max_predict_ms)
        lane = (request.client.host if request.client else "", request.headers.get("user-agent"))
        events = infill_lanes.supersede(lane, limited(gw.stream(turn), limits))
        builder = InfillResponseBuilder(req.response_fields, limits)
        return await _respond(events, builder, req.stream, {}, gw, done=False)

    @app.get("/v1/sessions")
    async def list_sessions(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        store = _sessions(sessions).store
        return {"object": "list", "data": await asyncio.to_thread(store.list_sessions, limit)}

    @app.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str) -> dict[str, Any]:
        store = _sessions(sessions).store
        transcript = await asyncio.to_thread(store.transcript, check_session_id(session_id))
        if transcript is None:
            raise NotFoundError(f"No session {session_id!r}.", param="session_id")
        return transcript

    @app.delete("/v1/sessions/{session_id}")
    async def delete_session(session_id: str) -> dict[str, Any]:
        deleted = await _sessions(sessions).forget(check_session_id(session_id))
        if not deleted:
            raise NotFoundError(f"No session {session_id!r}.", param="session_id")
        return {"id": session_id, "object": "tandem.session", "deleted": True}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": gw.local.model_name, "object": "model", "owned_by": "tandem-local"}]
        if gw.cloud is not None:
            data.append({"id": gw.cloud.model, "object": "model", "owned_by": "tandem-cloud"})
        return {"object": "list", "data": data}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", **gw.health()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4")


REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "ChatCompletionRequest": ChatCompletionRequest,
    "CompletionRequest": CompletionRequest,
    "InfillRequest": InfillRequest,
}


def _body_schema(name: str) -> dict[str, Any]:
    """The OpenAPI request body of an operation whose body is read by hand (to enforce the
    size limit before parsing): the model, published under components/schemas."""
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _publish_request_schemas(app: FastAPI) -> None:
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = default_openapi()
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for name, model in REQUEST_MODELS.items():
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[name] = body
        return app.openapi_schema or document

    app.openapi = openapi  # type: ignore[method-assign]


def _check_limits(req: ChatCompletionRequest, settings: Settings) -> None:
    if len(req.messages) > settings.max_messages:
        raise InvalidRequestError(
            f"The request has {len(req.messages)} messages; this gateway accepts at most "
            f"{settings.max_messages} (TANDEM_MAX_MESSAGES). With a session, send only new ones.",
            param="messages",
        )
    for i, m in enumerate(req.messages):
        if len(m.text()) > settings.max_message_chars:
            raise InvalidRequestError(
                f"Message {i} has {len(m.text())} characters; the limit is "
                f"{settings.max_message_chars} (TANDEM_MAX_MESSAGE_CHARS).",
                param=f"messages.{i}.content",
            )


def _check_text(settings: Settings, **texts: str) -> None:
    for param, text in texts.items():
        if len(text) > settings.max_message_chars:
            raise InvalidRequestError(
                f"'{param}' has {len(text)} characters; the limit is "
                f"{settings.max_message_chars} (TANDEM_MAX_MESSAGE_CHARS).",
                param=param,
            )


def _no_session(request: Request) -> None:
    if request.headers.get("x-session-id"):
        raise InvalidRequestError(
            "Text completions have no sessions (a session holds a chat history); drop the "
            "X-Session-Id header, or use /v1/chat/completions.",
            param="X-Session-Id",
        )


def _session_id(header: str | None, body: str | None) -> str | None:
    if header and body and header != body:
        raise InvalidRequestError(
            "The X-Session-Id header and tandem.session_id name different sessions; send one.",
            param="tandem.session_id",
        )
    session_id = header or body
    return None if session_id is None else check_session_id(session_id)


def _sessions(sessions: SessionService | None) -> SessionService:
    if sessions is None:
        raise InvalidRequestError(
            "Sessions are disabled on this gateway (TANDEM_SESSIONS=false); send the whole "
            "conversation in messages instead.",
            code="sessions_disabled",
        )
    return sessions


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_big = PayloadTooLargeError(
        f"The request body is larger than {limit} bytes (TANDEM_MAX_BODY_BYTES)."
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def _parse(body: bytes, model: type[Request_]) -> Request_:
    if not body.strip():
        raise InvalidRequestError("The request body is empty; send a JSON request.")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request(exc.errors()) from None


async def _respond(
    events: AsyncGenerator[GatewayEvent, None],
    builder: Builder,
    stream: bool,
    headers: dict[str, str],
    gw: Gateway,
    done: bool = True,
) -> Response:
    """The answer as one JSON object or an SSE stream, once the route is known."""
    try:
        route, head = await _until_first_output(events)
    except BaseException:
        await events.aclose()
        raise
    headers.update({"X-Tandem-Route": route.tier.value, "X-Tandem-Reason": route.reason})
    if stream:
        sse = _sse(builder, route, head, events, gw, done)
        return StreamingResponse(sse, media_type="text/event-stream", headers=headers)
    return JSONResponse(await _collect(builder, route, head, events), headers=headers)


async def _until_first_output(
    events: AsyncGenerator[GatewayEvent, None],
) -> tuple[RouteInfo, list[GatewayEvent]]:
    """Pull events until text or the end, so headers name the tier that really answers."""
    route: RouteInfo | None = None
    head: list[GatewayEvent] = []
    async for event in events:
        head.append(event)
        if isinstance(event, RouteInfo):
            route = event
        elif isinstance(event, Finish | ToolCallDelta) or event.text:
            break
    assert route is not None, "the gateway yields a RouteInfo first"
    return route, head


async def _replay(
    head: list[GatewayEvent], rest: AsyncIterator[GatewayEvent]
) -> AsyncIterator[GatewayEvent]:
    for event in head:
        yield event
    async for event in rest:
        yield event


async def _collect(
    builder: Builder,
    route: RouteInfo,
    head: list[GatewayEvent],
    events: AsyncGenerator[GatewayEvent, None],
) -> dict[str, Any]:
    tokens: list[TokenEvent] = []
    calls = CallBuilder()
    async with contextlib.aclosing(events):
        async for event in _replay(head, events):
            if isinstance(event, RouteInfo):
                route = event
            elif isinstance(event, TokenEvent):
                tokens.append(event)
            elif isinstance(event, ToolCallDelta):
                calls.delta(event)
            else:
                return builder.completion(route, tokens, event, calls.calls())
    raise TandemError("The answering tier ended without finishing the response.")


async def _sse(
    builder: Builder,
    route: RouteInfo,
    head: list[GatewayEvent],
    events: AsyncGenerator[GatewayEvent, None],
    gw: Gateway,
    done: bool = True,
) -> AsyncIterator[str]:
    if (opening := builder.opening(route)) is not None:
        yield _data(opening)
    try:
        async for event in _replay(head, events):
            if isinstance(event, RouteInfo):
                route = event
            elif isinstance(event, TokenEvent):
                if event.text or builder.want_logprobs:
                    yield _data(builder.token_chunk(route, event))
            elif isinstance(event, ToolCallDelta):
                yield _data(builder.tool_chunk(route, event))
            else:
                yield _data(builder.final_chunk(route, event))
    except TandemError as exc:  # headers are gone: report in-band, as OpenAI does
        gw.metrics.count_error(str(exc.code))
        yield _data(exc.to_openai())
    except Exception:  # a bug must not cut the stream bare: the client still gets an end
        log.exception("unexpected error while streaming a response")
        err = TandemError("Internal error while streaming; see the server log.")
        gw.metrics.count_error(str(err.code))
        yield _data(err.to_openai())
    finally:
        with contextlib.suppress(Exception):
            await events.aclose()
    if done:
        yield "data: [DONE]\n\n"


def _data(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


# -- errors -----------------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI, gw: Gateway) -> None:
    @app.exception_handler(TandemError)
    async def tandem_error(request: Request, exc: TandemError) -> JSONResponse:
        gw.metrics.count_error(str(exc.code))
        headers = None
        if exc.retry_after_s is not None:
            headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        return JSONResponse(exc.to_openai(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await tandem_error(request, invalid_request(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = TandemError(str(exc.detail), code=f"http_{exc.status_code}")
        err.status_code = exc.status_code
        err.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return await tandem_error(request, err)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return await tandem_error(request, TandemError("Internal error; see the server log."))
