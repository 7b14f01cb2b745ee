"""The request path shared by both inference APIs: who may call which deployment, then the
call itself through the deployment's pool.

Admission order on every request, each a named step: authentication (key -> deployment) ->
network settings (caller address; 403 before the body is read whenever the deployment is known
from the key or the URL) -> budget (`admit_budget`, 403 budget_exhausted) -> requests and tokens
per minute (429) -> per-workspace caps -> body size -> parse -> the fair queue (pool).
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from fastapi import Request

from modelport.api import credentials
from modelport.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthenticated,
)
from modelport.identity import secrets as keysecrets
from modelport.identity.service import IdentityService
from modelport.inference.gateway import Gateway
from modelport.inference.routing import Route

if TYPE_CHECKING:
    from modelport.metering.budgets import BudgetService as BudgetGate
from modelport.workers.client import ChoiceFinished, GenerateEvent, StreamUsage, TextDelta, Ticket, WorkerClient
from modelport.workers.protocol import GenerateBody


@dataclass(frozen=True)
class Caller:
    """A workspace API key (any deployment of its workspace) or one deployment's key."""

    workspace_id: str
    deployment: Route | None = None


def key_from(request: Request, *, azure: bool = False) -> str:
    """The key of an inference request (credentials.py); Azure's `api-key` first on the Azure API.
    No key, or an Authorization header that is not a Bearer key, answers 401 naming both forms."""
    if azure and (key := credentials.api_key(request.headers)) is not None:
        return key
    try:
        token = credentials.bearer(request.headers.get("authorization"))
    except Unauthenticated:
        token = None
    if token:
        return token
    raise Unauthenticated(
        "Missing key: send 'Authorization: Bearer <key>'" + (" or 'api-key: <key>'." if azure else "."),
        details={"openai_code": "invalid_api_key"},
    )


def authenticate(gateway: Gateway, identity: IdentityService, secret: str) -> Caller:
    parsed = keysecrets.parse(secret)
    if parsed is not None and parsed.kind == "mpd":
        route = gateway.by_key.get(parsed.lookup)
        if route is not None:
            digest = keysecrets.digest(secret)
            if hmac.compare_digest(
                digest, route.primary_digest if parsed.lookup == route.primary_lookup else route.secondary_digest
            ):
                return Caller(workspace_id=route.workspace_id, deployment=route)
        raise Unauthenticated("Invalid deployment key.", details={"openai_code": "invalid_api_key"})
    if parsed is not None and parsed.kind == "mpp":
        raise Forbidden("A publisher API key cannot call deployments; it has no workspace powers.",
                        details={"azure_code": "Forbidden"})
    try:
        principal = identity.authenticate(secret)
    except Unauthenticated as exc:
        exc.details["openai_code"] = "invalid_api_key"
        raise
    principal.require("deployments.call")
    return Caller(workspace_id=principal.workspace_id)


def resolve(gateway: Gateway, caller: Caller, name: str | None) -> Route:
    """The deployment this caller names; another workspace's answers 404 like a missing one."""
    if caller.deployment is not None:
        if name is not None and name != caller.deployment.name:
            raise NotFound(
                "The deployment named in the request does not exist or this key cannot call it.",
                details={"openai_code": "model_not_found", "azure_code": "DeploymentNotFound"},
            )
        return caller.deployment
    if not name:
        raise InvalidInput("Name the deployment in the 'model' field.", field="model")
    route = gateway.by_name.get((caller.workspace_id, name))
    if route is None:
        raise NotFound(
            "The deployment named in the request does not exist or this key cannot call it.",
            details={"openai_code": "model_not_found", "azure_code": "DeploymentNotFound"},
        )
    return route


def check_client(route: Route, request: Request) -> None:
    host = request.client.host if request.client else None
    if not route.allows_client(host):
        raise Forbidden(
            "Public access to this deployment is off and your address is not in its allowed ranges.",
            details={"azure_code": "Forbidden"},
        )


def check_ready(route: Route) -> None:
    if route.state == "succeeded":
        return
    if route.state == "creating":
        raise ServiceUnavailable("This deployment is still being created; retry in a few seconds.")
    if route.state == "suspended":  # deployments/suspension.py: every reason's message
        raise ServiceUnavailable(f"This deployment is suspended. {route.state_reason or ''} "
                                 "See modelport deployments show.".replace("  ", " "))
    if route.state == "failed":
        raise Conflict(
            "This deployment failed to start; see its state reason (modelport deployments show) and create it again."
        )
    raise ServiceUnavailable("This deployment is being deleted.")


def admit_budget(budgets: BudgetGate, route: Route) -> None:
    """Admission step after network settings: a call billed in a currency whose monthly budget the
    workspace has spent is refused with 403 `budget_exhausted` (clients must not retry). Memory
    only (metering/budgets.py). Rate limits are the next step."""
    budgets.check(route)


async def read_json(request: Request, limit: int) -> dict:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"The request body is larger than the {limit} bytes this server accepts.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than the {limit} bytes this server accepts.")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object.")
    return body


@dataclass
class Choice:
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None


async def generate(gateway: Gateway, route: Route, body: GenerateBody,
                   ticket: Ticket | None = None) -> AsyncGenerator[GenerateEvent, None]:
    """Stream the worker's events for one request through the deployment's pool (`ticket`: to
    ask its worker, after a cut, what it generated)."""
    pool = await gateway.pool_for(route)
    async for event in pool.generate(route.workspace_id, route.id, body, ticket):
        yield event


@dataclass
class Tally:
    """What the worker produced so far for one request: its text deltas (one per decoded token,
    so a lower bound of the tokens it generated) and its final usage, once it came."""

    deltas: int = 0
    usage: StreamUsage | None = None


async def collect(events: AsyncIterator[GenerateEvent], n: int,
                  tally: Tally | None = None) -> tuple[list[Choice], StreamUsage]:
    choices = [Choice() for _ in range(n)]
    tally = tally if tally is not None else Tally()
    async for ev in events:
        if isinstance(ev, TextDelta):
            tally.deltas += 1
            choices[ev.index].text.append(ev.text)
        elif isinstance(ev, ChoiceFinished):
            choices[ev.index].finish_reason = ev.finish_reason
        elif isinstance(ev, StreamUsage):
            tally.usage = ev
    return choices, tally.usage or StreamUsage(0, 0)


@dataclass
class PromptSize:
    """A chat's `messages`, a text `prompt` or embeddings `inputs`, to be counted against the model's
    context before they are screened. Counted by a ready worker of the deployment with its own
    tokenizer and chat template, outside the generation queue (counting generates nothing).
    `prompt_tokens` keeps the count once made (metering bills a cut stream's prompt with it)."""

    gateway: Gateway
    route: Route
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    inputs: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    prompt_tokens: int | None = None

    async def count(self) -> int:
        """The prompt's tokens (counted once), by a ready worker of the deployment."""
        if self.prompt_tokens is None:
            counted = await (await self.counter()).count_tokens(messages=self.messages, prompt=self.prompt)
            self.prompt_tokens = counted.count
        return self.prompt_tokens

    async def counter(self) -> WorkerClient:
        """A ready worker of the deployment (a stopped serverless pool starts)."""
        pool = await self.gateway.pool_for(self.route)
        ready = pool.ready()
        if not ready:
            raise ServiceUnavailable(f"No worker of geography '{self.route.geography}' is available for this "
                                     "deployment right now; requests are never sent outside it. Retry shortly.")
        return min(ready, key=lambda m: m.inflight).client

    async def check(self, counter: WorkerClient) -> None:
        """Refuse (400, naming the limit) a prompt, or an embeddings input, that cannot fit the context."""
        counted = await counter.count_tokens(messages=self.messages, prompt=self.prompt, input=self.inputs,
                                             tools=self.tools)
        limit = counted.context_length
        if self.inputs is None:
            self.prompt_tokens = counted.count
        if self.inputs is not None:
            longest = max(counted.counts or [0])
            if longest > limit:
                raise InvalidInput(f"An input has {longest} tokens; this model's context takes at most {limit} "
                                   "tokens per input. Shorten it or split it.", field="input")
        elif counted.count >= limit:
            where = "messages" if self.messages is not None else "prompt"
            raise InvalidInput(f"The prompt has {counted.count} tokens, which fills this model's context window of "
                               f"{limit} tokens and leaves no room for an answer; shorten the {where}.", field=where)


async def embed(gateway: Gateway, route: Route, texts: list[str]) -> tuple[list[list[float]], int]:
    pool = await gateway.pool_for(route)
    async with pool.slot(route.workspace_id, route.id) as client:
        result = await client.embed(texts)
    return result.data, result.prompt_tokens


def encode_embedding(vector: list[float], fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector
