"""Inference routes: OpenAI-compatible under /v1, Azure AI Model Inference under /deployments.

Thin: authenticate, find the deployment, check the caller's address, read the body, call the
shared handler (which admits the request: inference/admission.py); every error leaves in the
surface's own shape, and every answer to an admitted request with its x-ratelimit-* headers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from modelport.errors import InvalidInput, ModelportError
from modelport.inference import admission, calls, handlers, responses
from modelport.inference.gateway import Gateway
from modelport.inference.protocol import ModelCard, ModelInfo, ModelList
from modelport.inference.routing import Route
from modelport.inference.wire_errors import AZURE, OPENAI
from modelport.offload import run_blocking

if TYPE_CHECKING:
    from modelport.api.deps import Services

router = APIRouter()

_BODY = {"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}, "required": True}}
EXTRA_MODES = ("error", "drop", "pass-through")
#: Where a request keeps its deployment's id once known (the ASGI scope), for /metrics.
DEPLOYMENT = "modelport.deployment"


def _ctx(request: Request) -> tuple[Services, Gateway]:
    svc: Services = request.app.state.services
    return svc, svc.gateway


async def _authenticate(svc: Services, gateway: Gateway, secret: str) -> calls.Caller:
    """calls.authenticate; an API key that is not in identity's cache is looked up on a worker
    thread, so that a slow database (or a flood of unknown keys) never stalls the event loop."""
    if svc.identity.needs_lookup(secret):
        return await run_blocking(calls.authenticate, gateway, svc.identity, secret)
    return calls.authenticate(gateway, svc.identity, secret)


def _found(request: Request, route: Route) -> Route:
    """The deployment of this request, for the metrics of its answer (its id only)."""
    request.scope[DEPLOYMENT] = route.id
    return route


async def _openai_call(request: Request, kind: str) -> Response:
    svc, gateway = _ctx(request)
    try:
        caller = await _authenticate(svc, gateway, calls.key_from(request))
        if caller.deployment is not None:
            calls.check_client(_found(request, caller.deployment), request)  # before the body is read
        body = await calls.read_json(request, svc.settings.max_request_bytes)
        model = body.get("model")
        route = _found(request, calls.resolve(gateway, caller, model if isinstance(model, str) else None))
        calls.check_client(route, request)
        admission.allowed(request, route)
        calls.admit_budget(svc.budgets, route)
        # next: requests and tokens per minute (429), once the body gives the estimate (admission.py)
        calls.check_ready(route)
        if kind == "chat":
            response = await handlers.chat(request, gateway, route, body, error_shape=OPENAI)
        elif kind == "completions":
            response = await handlers.completions(request, gateway, route, body, error_shape=OPENAI)
        elif kind == "responses":
            response = await responses.create(request, gateway, route, body, error_shape=OPENAI)
        else:
            response = await handlers.embeddings(gateway, route, body, request=request)
    except ModelportError as exc:
        response = OPENAI.response(exc)
    return await admission.answer(request, response)


@router.post("/v1/chat/completions", name="inference.openai.chat_completions", openapi_extra=_BODY,
             tags=["inference"])
async def openai_chat(request: Request) -> Response:
    return await _openai_call(request, "chat")


@router.post("/v1/completions", name="inference.openai.completions", openapi_extra=_BODY, tags=["inference"])
async def openai_completions(request: Request) -> Response:
    return await _openai_call(request, "completions")


@router.post("/v1/embeddings", name="inference.openai.embeddings", openapi_extra=_BODY, tags=["inference"])
async def openai_embeddings(request: Request) -> Response:
    return await _openai_call(request, "embeddings")


@router.post("/v1/responses", name="inference.openai.responses", openapi_extra=_BODY, tags=["inference"])
async def openai_responses(request: Request) -> Response:
    """The Responses API for what maps onto a stateless chat; nothing is stored (P1)."""
    return await _openai_call(request, "responses")


@router.get("/v1/responses/{response_id}", name="inference.openai.responses_get", tags=["inference"],
            responses={404: {"description": "Always: modelport never stores a response."}})
async def openai_responses_get(response_id: str, request: Request) -> Response:
    return await _never_stored(request, response_id)


@router.delete("/v1/responses/{response_id}", name="inference.openai.responses_delete", tags=["inference"],
               responses={404: {"description": "Always: modelport never stores a response."}})
async def openai_responses_delete(response_id: str, request: Request) -> Response:
    return await _never_stored(request, response_id)


async def _never_stored(request: Request, response_id: str) -> Response:
    svc, gateway = _ctx(request)
    try:
        await _authenticate(svc, gateway, calls.key_from(request))
        raise responses.not_found(response_id)
    except ModelportError as exc:
        return OPENAI.response(exc)


@router.get("/v1/models", name="inference.openai.models", tags=["inference"])
async def openai_models(request: Request) -> Response:
    """Exactly the deployments this key may call."""
    svc, gateway = _ctx(request)
    try:
        caller = await _authenticate(svc, gateway, calls.key_from(request))
        routes = [caller.deployment] if caller.deployment else gateway.routes_of(caller.workspace_id)
        return JSONResponse(ModelList(object="list", data=[
            ModelCard(id=r.name, object="model", created=r.created_at, owned_by="modelport", task=r.task,
                      state=r.state) for r in routes if r is not None]))
    except ModelportError as exc:
        return OPENAI.response(exc)


async def _azure_call(request: Request, name: str, kind: str) -> Response:
    svc, gateway = _ctx(request)
    try:
        caller = await _authenticate(svc, gateway, calls.key_from(request, azure=True))
        route = _found(request, calls.resolve(gateway, caller, name))
        calls.check_client(route, request)  # the URL names the deployment: before the body
        admission.allowed(request, route)
        mode = request.headers.get("extra-parameters", "error").lower()
        if mode not in EXTRA_MODES:
            raise InvalidInput("extra-parameters must be error, drop or pass-through.", field="extra-parameters")
        if kind == "info":
            calls.check_ready(route)
            return JSONResponse(ModelInfo(
                model_name=route.model_name,
                model_type="chat-completion" if route.task == "chat-completion" else "embeddings",
                model_provider_name="modelport"))
        calls.admit_budget(svc.budgets, route)
        # next: requests and tokens per minute (429), once the body gives the estimate (admission.py)
        body = await calls.read_json(request, svc.settings.max_request_bytes)
        calls.check_ready(route)
        # pass-through: parameters the schema does not know are handed on only when the runtime
        # understands them; ours take none beyond the schema, so they are dropped (documented).
        extra_mode = "error" if mode == "error" else "drop"
        if kind == "chat":
            response = await handlers.chat(request, gateway, route, body, extra_mode=extra_mode,
                                           error_shape=AZURE, azure=True)
        else:
            response = await handlers.embeddings(gateway, route, body, extra_mode=extra_mode, request=request,
                                                 azure=True)
    except ModelportError as exc:
        response = AZURE.response(exc)
    return await admission.answer(request, response)


@router.post("/deployments/{name}/chat/completions", name="inference.azure.chat_completions", openapi_extra=_BODY,
             tags=["inference"])
async def azure_chat(name: str, request: Request) -> Response:
    return await _azure_call(request, name, "chat")


@router.post("/deployments/{name}/embeddings", name="inference.azure.embeddings", openapi_extra=_BODY,
             tags=["inference"])
async def azure_embeddings(name: str, request: Request) -> Response:
    return await _azure_call(request, name, "embeddings")


@router.get("/deployments/{name}/info", name="inference.azure.info", tags=["inference"])
async def azure_info(name: str, request: Request) -> Response:
    return await _azure_call(request, name, "info")
