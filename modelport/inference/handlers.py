"""Chat, completions and embeddings, shared by the OpenAI and Azure surfaces.

A streamed answer is started only after the worker produced its first event, so that the
errors that happen before any output (prompt too long, queue full, worker gone) still get a
proper HTTP status. A client that disconnects mid-stream cancels the generator, which closes
the worker connection, and the worker stops decoding.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from modelport.errors import InvalidInput, ModelportError
from modelport.inference import calls
from modelport.inference.manager import DeploymentManager, Route
from modelport.inference.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, split_extra
from modelport.workers.client import ChoiceFinished, StreamUsage, TextDelta
from modelport.workers.protocol import GenerateBody

ErrorShape = Callable[[ModelportError], JSONResponse]


def parse(model: type[BaseModel], body: dict[str, Any], extra_mode: str = "error") -> Any:
    """Validate a request body; `extra_mode` is Azure's extra-parameters (`error`, `drop`, `pass-through`)."""
    known, extra = split_extra(body, model)
    if extra and extra_mode == "error":
        raise InvalidInput(f"Unrecognized or unsupported request parameter: {extra[0]}. Remove it"
                           + (" or send 'extra-parameters: drop'." if extra_mode else "."), field=extra[0])
    try:
        return model.model_validate(known)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidInput(f"Invalid value for '{where}': {err['msg']}.", field=where) from exc


def _check_task(route: Route, task: str) -> None:
    if route.task != task:
        raise InvalidInput(f"Deployment '{route.name}' serves {route.task}, not {task}.", field="model")


def _sse(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _first_then_rest(events: AsyncIterator[Any]) -> tuple[Any, AsyncIterator[Any]]:
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        first = None
    return first, events


async def chat(request: Request, manager: DeploymentManager, route: Route, body: dict, *,
               extra_mode: str = "error", error_shape: ErrorShape) -> Response:
    req: ChatCompletionRequest = parse(ChatCompletionRequest, body, extra_mode)
    _check_task(route, "chat-completion")
    gen = GenerateBody(
        messages=[m.model_dump(exclude_none=True) for m in req.messages],
        max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p, stop=req.stop or [], seed=req.seed, n=req.n,
        response_format=req.response_format.type if req.response_format else "text")
    return await _complete(request, manager, route, gen, req, "chat.completions", error_shape)


async def completions(request: Request, manager: DeploymentManager, route: Route, body: dict, *,
                      error_shape: ErrorShape) -> Response:
    req: CompletionRequest = parse(CompletionRequest, body)
    _check_task(route, "chat-completion")
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidInput("prompt takes one text here (a list of exactly one is accepted).", field="prompt")
        prompt = prompt[0]
    gen = GenerateBody(prompt=prompt, max_tokens=req.max_tokens or 16,
                       temperature=1.0 if req.temperature is None else req.temperature,
                       top_p=1.0 if req.top_p is None else req.top_p, stop=req.stop or [], seed=req.seed, n=req.n)
    return await _complete(request, manager, route, gen, req, "completions", error_shape)


async def _complete(request: Request, manager: DeploymentManager, route: Route, gen: GenerateBody, req: Any,
                    api: str, error_shape: ErrorShape) -> Response:
    chat_api = api == "chat.completions"
    rid = ("chatcmpl-" if chat_api else "cmpl-") + secrets.token_hex(12)
    created = int(time.time())
    events = calls.generate(manager, route, gen)
    if not req.stream:
        try:
            choices, usage = await calls.collect(events, gen.n)
        except ModelportError:
            manager.record_usage(route, api, 0, 0, "error")
            raise
        manager.record_usage(route, api, usage.prompt_tokens, usage.completion_tokens, "success")
        out_choices = []
        for i, c in enumerate(choices):
            text = "".join(c.text)
            if chat_api:
                out_choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                    "logprobs": None, "finish_reason": c.finish_reason})
            else:
                out_choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": c.finish_reason})
        return Response(orjson.dumps({
            "id": rid, "object": "chat.completion" if chat_api else "text_completion", "created": created,
            "model": route.name, "choices": out_choices,
            "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                      "total_tokens": usage.prompt_tokens + usage.completion_tokens}}),
            media_type="application/json")

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    first, events = await _first_then_rest(events)
    obj = "chat.completion.chunk" if chat_api else "text_completion"

    def chunk(choices: list[dict], usage: dict | None = None) -> bytes:
        out: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": route.name, "choices": choices}
        if include_usage:
            out["usage"] = usage
        return _sse(out)

    def delta_choice(index: int, text: str | None, finish: str | None, role: bool = False) -> dict:
        if chat_api:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}

    async def stream() -> AsyncIterator[bytes]:
        usage = StreamUsage(0, 0)
        outcome = "cancelled"
        try:
            if chat_api:
                for i in range(gen.n):
                    yield chunk([delta_choice(i, "", None, role=True)])
            ev = first
            while ev is not None:
                if isinstance(ev, TextDelta):
                    yield chunk([delta_choice(ev.index, ev.text, None)])
                elif isinstance(ev, ChoiceFinished):
                    yield chunk([delta_choice(ev.index, None if chat_api else "", ev.finish_reason)])
                elif isinstance(ev, StreamUsage):
                    usage = ev
                ev = await anext(events, None)
            if include_usage:
                yield chunk([], {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                                 "total_tokens": usage.prompt_tokens + usage.completion_tokens})
            outcome = "success"
            yield b"data: [DONE]\n\n"
        except ModelportError as exc:
            outcome = "error"
            err = orjson.loads(error_shape(exc).body)
            yield _sse(err)
        finally:
            await events.aclose()
            manager.record_usage(route, api, usage.prompt_tokens, usage.completion_tokens, outcome)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def embeddings(manager: DeploymentManager, route: Route, body: dict, *, extra_mode: str = "error") -> Response:
    req: EmbeddingRequest = parse(EmbeddingRequest, body, extra_mode)
    _check_task(route, "embeddings")
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts or len(texts) > 2048 or any(not isinstance(t, str) or not t for t in texts):
        raise InvalidInput("input takes 1 to 2048 non-empty texts.", field="input")
    vectors, prompt_tokens = await calls.embed(manager, route, texts)
    if req.dimensions is not None and vectors and req.dimensions != len(vectors[0]):
        raise InvalidInput(f"This model returns {len(vectors[0])} dimensions; omit 'dimensions' or set it to that.",
                           field="dimensions")
    manager.record_usage(route, "embeddings", prompt_tokens, 0, "success")
    return Response(orjson.dumps({
        "object": "list", "model": route.name,
        "data": [{"object": "embedding", "index": i, "embedding": calls.encode_embedding(v, req.encoding_format)}
                 for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}), media_type="application/json")
