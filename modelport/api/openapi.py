"""The OpenAPI document, exact: every status each operation can answer, in its error shape.

FastAPI documents a route's success answer and a 422 in its own validation shape, which is not
ours. Generated clients and validators (schemathesis runs against a live server in
tests/api/test_schemathesis.py) trust the document, so here, once for every route, the document
is completed after FastAPI built it:

- the statuses that come from how a route is built, derived from the route itself:
  an API-key dependency (`api.deps.principal` and its variants) answers 401 for no key or a bad
  one, 403 for a key that may not name the `X-Modelport-Workspace` it sent (and a publisher key
  on a workspace route), 404 for a workspace a platform admin names that does not exist; a
  request body answers 413 past MODELPORT_MAX_CONTROL_REQUEST_BYTES (api/request_limits.py) and
  422 when it does not validate; query and path parameters with a type or constraints 422;
- the statuses that come from what the route's service does (400, 409, 422, 429, 503), from one
  table, `ANSWERS`, keyed by route name; a route missing from it fails
  tests/api/test_openapi_document.py, so a new route is documented when it lands;
- the error body of each surface: the control plane's `ErrorResponse`, OpenAI's error on /v1,
  the Azure AI Model Inference error on /deployments;
- the key as a security scheme (HTTP bearer; on /deployments also Azure's `api-key` header)
  instead of an `authorization` header parameter, so that clients send it as a credential.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, cast

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel, Field
from starlette.routing import BaseRoute

from modelport.api import deps
from modelport.inference import protocol

#: Statuses a route can answer because of what its service does, beyond those derived from the
#: route's dependencies and parameters (module docstring). 400: a value the schema allows but the
#: service refuses (a name in use elsewhere, a reference that does not parse); 409: a state that
#: does not allow it or a duplicate; 422: an artifact that parses but is not valid; 429: a
#: bounded queue is full; 503: a dependency (key provider, blob store, worker pool) is down.
ANSWERS: dict[str, tuple[int, ...]] = {
    # ops
    "health.alive": (),
    "health.ready": (503,),
    "ops.metrics": (),
    "audit.list": (),
    # identity
    "me.read": (),
    "workspace.create": (400, 409),
    "workspace.list": (),
    "workspace.read": (),
    "workspace.delete": (400, 409, 503),
    "workspace.member.add_any": (409,),
    "member.list": (),
    "member.add": (409,),
    "member.update": (409,),
    "member.remove": (409,),
    "user.create": (400, 409),
    "user.list": (),
    "user.update": (409,),
    "user.apikey.create": (400, 409),
    "apikey.create": (400,),
    "apikey.list": (),
    "apikey.revoke": (),
    # catalog
    "model.list": (400,),
    "model.read": (),
    "model.update": (400, 409),
    "model.deprecate": (400, 409),
    "model.scan": (),
    "model.delete": (409,),
    "model.download": (400, 409),
    "model.upload.create": (400, 409),
    "model.upload.read": (),
    "model.upload.file": (400, 409, 413),
    "model.import": (400, 409, 422),
    "model.upload.abort": (),
    # deployments
    "deployment.create": (400, 409, 429, 503),
    "deployment.list": (),
    "deployment.read": (),
    "deployment.update": (400, 409, 429, 503),
    "deployment.delete": (503,),
    "deployment.regenerate_key": (),
    "deployment.usage": (503,),
    "deployment.content_filter.read": (),
    "deployment.content_filter.update": (400,),
    "deployment.content_filter.counts": (),
    "pool.list": (),
    # datasets and keys
    "dataset.create": (400, 409, 413, 503),
    "dataset.list": (),
    "dataset.read": (),
    "dataset.delete": (400, 503),
    "workspace_key.read": (400, 409, 503),
    "workspace_key.rotate": (400, 409, 503),
    "workspace_key.rewrap": (400, 503),
    "workspace_key.min_decryption_version": (400, 409, 503),
    "cmk.register": (400, 409, 503),
    "cmk.unregister": (400, 409, 503),
    "cmk.disable": (400, 409, 503),
    "cmk.enable": (400, 409, 503),
    "cmk.rotate": (400, 409, 503),
    "platform_key.read": (400, 503),
    "platform_key.rotate": (400, 409, 503),
    "platform_key.rewrap": (400, 409, 503),
    "platform_key.min_decryption_version": (400, 409, 503),
    # safety
    "safety.analyze": (400, 429, 503),
    "safety.blocklist.list": (),
    "safety.blocklist.put": (400,),
    "safety.blocklist.delete": (),
    # fine-tuning
    "finetune.create": (400, 409),
    "finetune.list": (),
    "finetune.read": (),
    "finetune.cancel": (409,),
    "finetune.model.delete": (400, 409, 503),
    # marketplace
    "publisher.create": (400, 409),
    "publisher.list": (),
    "publisher.read": (),
    "publisher.user.add": (409,),
    "publisher.apikey.create": (400, 409),
    "publisher.update": (400, 409),
    "publisher.delete": (409,),
    "publisher.apikey.list": (),
    "publisher.apikey.revoke": (),
    "offer.create": (400, 409, 503),
    "offer.list": (),
    "offer.read": (),
    "offer.terms.read": (),
    "offer.prices": (400, 409),
    "offer.retire": (409,),
    "offer.terms.create": (409,),
    "offer.terms.retire": (409, 503),
    "subscription.create": (409, 429, 503),
    "subscription.list": (),
    "subscription.read": (),
    "subscription.cancel": (503,),
    "publisher.subscriptions": (404,),
    "publisher.report": (400, 404, 503),
    # usage and budgets
    "usage.read": (400, 503),
    "budget.list": (503,),
    "budget.read": (503,),
    "budget.set": (400, 503),
    # policies
    "policy.list": (),
    "policy.schema": (),
    "policy.compliance": (),
    "policy.compliance.enforce": (409, 429, 503),
    "policy.test": (400,),
    "policy.read": (),
    "policy.put": (400, 409),
    "policy.delete": (),
    # inference: every status, in the surface's own error shape (inference/wire_errors.py); these
    # routes authenticate and read their body themselves (inference/calls.py), not through FastAPI
    "inference.openai.chat_completions": (400, 401, 403, 404, 409, 413, 429, 503),
    "inference.openai.completions": (400, 401, 403, 404, 409, 413, 429, 503),
    "inference.openai.embeddings": (400, 401, 403, 404, 409, 413, 429, 503),
    "inference.openai.responses": (400, 401, 403, 404, 409, 413, 429, 503),
    "inference.openai.responses_get": (401, 403, 404),
    "inference.openai.responses_delete": (401, 403, 404),
    "inference.openai.models": (401, 403),
    "inference.azure.chat_completions": (400, 401, 403, 404, 409, 413, 429, 503),
    "inference.azure.embeddings": (400, 401, 403, 404, 409, 413, 429, 503),
    "inference.azure.info": (400, 401, 403, 404, 409, 503),
}

DESCRIPTIONS = {
    400: "Invalid input: `error.field` names what to fix.",
    401: "No API key, or an unknown, revoked or expired one.",
    403: "The key is valid, but its role (or a policy, or a spent budget) does not allow this.",
    404: "Not found, or not visible to this key (another workspace's answers the same).",
    409: "The current state does not allow this (a duplicate name, a resource in use).",
    413: "The request body is larger than this server accepts.",
    422: "The request does not validate: `error.details.fields` names each field and the problem.",
    429: "Too many requests: retry after `Retry-After` seconds.",
    503: "A dependency (key provider, storage, worker pool) is unavailable; retry later.",
}

#: The dependencies that authenticate an API key, and the statuses each can answer by itself.
_AUTH: dict[Callable[..., Any], tuple[int, ...]] = {
    deps.principal: (401, 403, 404),
    deps.market_principal: (401, 403, 404),
    deps.publisher_principal: (401, 403),
}
#: The request bodies of the inference routes, which read their body themselves: the protocol's
#: models. `model` names the deployment: required with an API key on /v1 (a deployment key may
#: leave it out), never needed on /deployments/{name}, whose URL names it.
_INFERENCE_BODIES: dict[str, tuple[type[BaseModel], bool]] = {
    "inference.openai.chat_completions": (protocol.ChatCompletionRequest, True),
    "inference.openai.completions": (protocol.CompletionRequest, True),
    "inference.openai.embeddings": (protocol.EmbeddingRequest, True),
    "inference.openai.responses": (protocol.ResponsesRequest, True),
    "inference.azure.chat_completions": (protocol.ChatCompletionRequest, False),
    "inference.azure.embeddings": (protocol.EmbeddingRequest, False),
}
_BEARER = "bearer"
_AZURE_KEY = "azureApiKey"


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable, machine-readable code (`not_found`, `conflict`, `invalid_input`...).")
    message: str = Field(description="What was wrong and what to do; never the value that was sent.")
    field: str | None = Field(description="The field, parameter or header at fault, if one is.")
    details: dict[str, Any] = Field(description="Structured details (`fields` for 422, `policies` for a denial).")
    request_id: str | None = Field(description="Identifies the request in the server log.")


class ErrorResponse(BaseModel):
    """The control plane's one error shape."""

    error: ErrorDetail


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class OpenAIErrorResponse(BaseModel):
    """OpenAI's error shape (a blocked prompt answers in the content-filter shape, with more fields)."""

    error: OpenAIErrorDetail


class AzureErrorDetail(BaseModel):
    code: str
    message: str
    status: int | None = None
    param: str | None = None


class AzureErrorResponse(BaseModel):
    """The Azure AI Model Inference error shape."""

    error: AzureErrorDetail


def install(app: FastAPI) -> None:
    """Replace the app's `openapi()` with one that completes FastAPI's document (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                              description=app.description, routes=app.routes)
            app.openapi_schema = complete(doc, list(api_routes(app.routes)))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def api_routes(routes: list[BaseRoute]) -> Iterator[APIRoute]:
    """Every documented route, with the path, name and dependencies it has where it is mounted
    (FastAPI keeps an included router's routes nested; its own route contexts resolve them)."""
    for context in iter_route_contexts(routes):
        if isinstance(context.original_route, APIRoute) and context.include_in_schema:
            yield cast(APIRoute, context)


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for d in dependant.dependencies:
        if d.call is not None:
            yield d.call
        yield from _calls(d)


def _params(dependant: Dependant) -> Iterator[Any]:
    yield from dependant.path_params
    yield from dependant.query_params
    for d in dependant.dependencies:
        yield from _params(d)


def _can_fail(field: Any) -> bool:
    """Whether a path or query parameter can fail validation: a type other than a string, or a
    constraint (pattern, length, bounds, enum)."""
    info = field.field_info
    if info.metadata:
        return True
    annotation = info.annotation
    return annotation not in (str, str | None)


def statuses(route: APIRoute) -> tuple[set[int], str]:
    """(the error statuses `route` can answer, the surface whose error shape they have)."""
    if route.path.startswith("/v1/"):
        surface = "openai"
    elif route.path.startswith("/deployments/"):
        surface = "azure"
    else:
        surface = "control"
    found = set(ANSWERS.get(route.name, ()))
    if surface == "control":
        for call in _calls(route.dependant):
            found |= set(_AUTH.get(call, ()))
        if route.body_field is not None:
            found.add(400)  # a JSON body that does not parse (FastAPI's answer)
        if route.body_field is not None or "requestBody" in (route.openapi_extra or {}):
            found.add(413)
        if route.body_field is not None or any(_can_fail(f) for f in _params(route.dependant)):
            found.add(422)
    return found, surface


def _authenticated(route: APIRoute, surface: str) -> bool:
    if surface != "control":
        return True
    return any(call in _AUTH for call in _calls(route.dependant))


def complete(doc: dict[str, Any], routes: list[APIRoute]) -> dict[str, Any]:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    refs = {}
    for surface, model in (("control", ErrorResponse), ("openai", OpenAIErrorResponse),
                           ("azure", AzureErrorResponse)):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas[model.__name__] = body
        refs[surface] = {"$ref": f"#/components/schemas/{model.__name__}"}
    doc["components"]["securitySchemes"] = {
        _BEARER: {"type": "http", "scheme": "bearer",
                  "description": "An API key (`mpk_...`); on the inference routes also a deployment key "
                                 "(`mpd_...`); on the marketplace's publisher routes a publisher key (`mpp_...`)."},
        _AZURE_KEY: {"type": "apiKey", "in": "header", "name": "api-key",
                     "description": "A key as the Azure AI Model Inference API sends it."},
    }
    for route in routes:
        if route.name in _INFERENCE_BODIES:
            _inference_body(doc, route, *_INFERENCE_BODIES[route.name])
        found, surface = statuses(route)
        for method in sorted(route.methods or ()):
            op = doc["paths"].get(route.path_format, {}).get(method.lower())
            if op is None:
                continue
            responses = op.setdefault("responses", {})
            if "422" in responses and 422 not in found:
                del responses["422"]  # FastAPI's, for a parameter that cannot fail
            for status in sorted(found):
                entry = responses.setdefault(str(status), {})
                entry["description"] = entry.get("description") or DESCRIPTIONS[status]
                if status == 422 or "content" not in entry:  # a route's own documented body stays
                    entry["content"] = {"application/json": {"schema": refs[surface]}}
                if status == 429:
                    entry["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                                        "schema": {"type": "integer", "minimum": 0}}}
            params = [p for p in op.get("parameters", ())
                      if not (p.get("in") == "header" and p.get("name", "").lower() == "authorization")]
            if params:
                op["parameters"] = params
            else:
                op.pop("parameters", None)
            if _authenticated(route, surface):
                op["security"] = [{_BEARER: []}, {_AZURE_KEY: []}] if surface == "azure" else [{_BEARER: []}]
    for unused in ("HTTPValidationError", "ValidationError"):
        if f'"#/components/schemas/{unused}"' not in json.dumps(doc):
            schemas.pop(unused, None)
    return doc


def _inference_body(doc: dict[str, Any], route: APIRoute, model: type[BaseModel], model_required: bool) -> None:
    schemas = doc["components"]["schemas"]
    body = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(body.pop("$defs", {}))
    name = model.__name__ + ("" if model_required else "Azure")
    if model_required:
        body["properties"]["model"] = {"type": "string", "minLength": 1, "maxLength": 100,
                                       "description": "The deployment to call (a deployment key may leave it out)."}
        body["required"] = sorted({*body.get("required", ()), "model"})
    schemas[name] = body
    for method in route.methods or ():
        op = doc["paths"][route.path_format][method.lower()]
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}

