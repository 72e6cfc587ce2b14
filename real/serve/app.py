"""The HTTP routes: OpenAI completions and chat, models, health, metrics, and the admin route.

`create_app(state)` builds a FastAPI app over a running router; it holds no globals, so tests and
benchmarks can run several servers in one process. The strategy is the operator's choice, never a
client's: clients name only the model; `POST /admin/strategy` (token required) changes the rest.
"""
from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from core_api.strategy import StrategyError, known_strategies
from real.serve import errors
from real.serve.body_limit import BodyLimit
from real.serve.config import ServeConfig
from real.serve.detokenizer import TextStream
from real.serve.errors import APIError
from real.serve.generation import ClientGone, EventStream, events, until_disconnect, whole
from real.serve.metrics import ServeMetrics
from real.serve.prompts import Frontend
from real.serve.responses import Shape
from real.serve.router import Router
from real.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    SamplingFields,
    StrategyChange,
    TokenizeRequest,
)


@dataclass
class ServeState:
    router: Router
    frontend: Frontend
    config: ServeConfig
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    started_strategy: str = ""  # the operator's choice at start-up, always allowed back
    started: int = field(default_factory=lambda: int(time.time()))


def check_strategy_allowed(name: str | None, modules: list[str], started: str) -> None:
    """Registered strategies, the one the server started with, and `module:Class` of a module on
    the operator's allowlist pass; any other `module:Class` is refused (403) before it is
    imported: naming a module runs its code."""
    if name is None or ":" not in name or name == started:
        return
    module = name.partition(":")[0]
    if module not in modules:
        raise APIError(403, f"strategy {name!r} is not registered and module {module!r} is not on this server's "
                       "allowlist (start it with --allow-strategy-module MODULE)", param="name",
                       code="strategy_not_allowed")


def endpoint_of(path: str) -> str:
    return {"/v1/completions": "completions", "/v1/chat/completions": "chat"}.get(path, "other")


def create_app(state: ServeState) -> FastAPI:
    app = FastAPI(title="microserving", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=state.config.max_body_bytes)
    errors.install(app, on_error=lambda path, status: state.metrics.reject(endpoint_of(path), status)
                   if path.startswith("/v1/") else None)
    router, frontend, metrics = state.router, state.frontend, state.metrics
    metrics.attach(router, frontend.served_name)
    router.on_finish = lambda run: metrics.finished(
        run, "chat" if run.req.id.startswith("chatcmpl") else "completions", time.monotonic())

    async def generate(http: Request, body: SamplingFields, kind: str, arrival: float):
        frontend.check_model(body.model)
        ids = frontend.chat_ids(body) if kind == "chat" else frontend.completion_ids(body)
        prep = frontend.prepare(body, ids, arrival, kind)
        run = router.admit(prep.req, arrival)
        active = run.active
        shape = Shape(kind, prep.req.id, frontend.served_name, prep.created, f"{active.name}-v{active.version}")
        text = TextStream(frontend.tokenizer, prep.stop)
        headers = {"x-microserving-strategy": active.name, "x-microserving-strategy-version": str(active.version),
                   "x-request-id": prep.req.id}
        if body.stream:
            return EventStream(events(run, text, shape, body.include_usage, body.continuous_usage), run.close, headers)
        try:
            result = await until_disconnect(http, whole(run, text, shape))
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the Run was closed and released
        finally:
            run.close()
        return JSONResponse(result, headers=headers)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        return await generate(http, body, "completion", time.monotonic())

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: Request):
        return await generate(http, body, "chat", time.monotonic())

    def model_card() -> dict:
        return {"id": frontend.served_name, "object": "model", "created": state.started, "owned_by": "microserving",
                "max_model_len": frontend.context_limit()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        frontend.check_model(model)
        return model_card()

    # vLLM's tokenizer routes, which benchmark clients use to count tokens as the server does.
    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        if body.model is not None:
            frontend.check_model(body.model)
        if body.messages is not None:
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            ids = frontend.tokenizer.encode(frontend.tokenizer.apply_chat_template(messages, body.add_generation_prompt))
        else:
            ids = frontend.tokenizer.encode(body.prompt)
        return {"count": len(ids), "max_model_len": frontend.context_limit(), "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        if body.model is not None:
            frontend.check_model(body.model)
        vocab = frontend.vocab_size or 2**31
        bad = [t for t in body.tokens if t >= vocab]
        if bad:
            raise APIError(400, f"token ids outside the vocabulary (size {vocab}): {bad[:5]}", param="tokens",
                           code="invalid_value")
        return {"prompt": frontend.tokenizer.decode(body.tokens)}

    @app.get("/health")
    async def health():
        engines = {e.id: ("up" if getattr(e, "down", None) is None else f"down: {e.down}") for e in router.engines}
        up = sum(v == "up" for v in engines.values())
        status = "ok" if up == len(engines) else "degraded" if up else "down"
        return JSONResponse({"status": status, "engines": engines, "strategy": router.active.describe(),
                             "in_flight": len(router.runs)}, status_code=200 if up else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # -- admin --------------------------------------------------------------------------------
    def authorize(http: Request) -> None:
        """Off (404) without a configured token; 401 for a missing or wrong one."""
        token = state.config.admin_token
        if not token:
            raise APIError(404, "admin routes are disabled: start the server with --admin-token "
                           "(or MICROSERVING_ADMIN_TOKEN)", code="admin_disabled")
        auth = http.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else http.headers.get("x-admin-token", "")
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise APIError(401, "missing or invalid admin token", code="invalid_admin_token")

    @app.get("/admin/strategy")
    async def get_strategy(http: Request):
        authorize(http)
        return {"current": router.active.describe(), "known": known_strategies(), "switches": router.switches}

    @app.post("/admin/strategy")
    async def set_strategy(http: Request):
        authorize(http)  # before reading the body: a disabled or refused admin route reveals nothing
        try:
            change = StrategyChange.model_validate_json(await http.body())
        except ValidationError as exc:
            raise errors.validation_error(RequestValidationError(exc.errors(include_url=False))) from None
        check_strategy_allowed(change.name, state.config.strategy_modules, state.started_strategy)
        try:
            old, new = router.switch(change.name, change.params)
        except StrategyError as exc:
            raise APIError(400, str(exc), param="name" if change.name else "params", code="invalid_strategy") from None
        return {"previous": old.describe(), "current": new.describe()}

    return app
