"""Chat, completions and embeddings, shared by the OpenAI and Azure surfaces.

A streamed answer is started only after the worker produced its first event, so that the
errors that happen before any output (prompt too long, queue full, worker gone) still get a
proper HTTP status. A client that disconnects mid-stream cancels the generator, which closes
the worker connection, and the worker stops decoding. A client that disconnects before its
answer started (waiting in the queue, or waiting for a non-streamed answer) cancels the same
way: uvicorn does not cancel a handler whose client went away, so the handler watches for it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from modelport.api.responses import ClosingStreamingResponse
from modelport.errors import InvalidInput, ModelportError, TooManyRequests
from modelport.inference import calls, filtering
from modelport.inference.manager import DeploymentManager, Route
from modelport.inference.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Message,
    split_extra,
)
from modelport.runtimes.base import flatten_content
from modelport.workers.client import ChoiceFinished, StreamUsage, TextDelta
from modelport.workers.protocol import GenerateBody

ErrorShape = Callable[[ModelportError], JSONResponse]
T = TypeVar("T")
CLIENT_CLOSED_REQUEST = 499  # nobody reads it; the access log shows why the request ended


class ClientGone(Exception):
    """The caller disconnected before its answer was ready."""


# Requests that answer sooner are not watched: a watcher task per request would cost about a
# tenth of the gateway's CPU at full load (profiled), and a request that short wastes nothing.
WATCH_AFTER_SECONDS = 0.05


async def _disconnected(request: Request) -> None:
    # The body has been read in full, so the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Request, work: Awaitable[T]) -> T:
    """Await `work` in this task, cancelled if the client disconnects first (raises ClientGone):
    a request nobody will read must not keep its place in the queue or its worker busy."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:  # not in a task (never the case under uvicorn): nothing to cancel
        return await work
    watcher: asyncio.Task[None] | None = None
    gone = False

    def on_disconnect(w: asyncio.Task[None]) -> None:
        nonlocal gone
        if not w.cancelled() and w.exception() is None:
            gone = True
            task.cancel()

    def watch() -> None:
        nonlocal watcher
        watcher = loop.create_task(_disconnected(request))
        watcher.add_done_callback(on_disconnect)

    timer = loop.call_later(WATCH_AFTER_SECONDS, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:  # our own cancel, nobody else's: the client left
            raise ClientGone from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.remove_done_callback(on_disconnect)
            watcher.cancel()


class Bill:
    """The one usage event of one generation request: committed before the answer's last byte
    (`commit`), or, for a request that ended early (client gone, worker lost), queued with what
    the worker produced until then (`cut`). Whichever comes first wins; the other does nothing."""

    def __init__(self, manager: DeploymentManager, route: Route, api: str, size: calls.PromptSize) -> None:
        self.manager, self.route, self.api, self.size = manager, route, api, size
        self.done = False

    async def prompt_tokens(self) -> int:
        """The prompt's tokens as counted before screening; counted now if it was not (0 if it cannot be)."""
        try:
            return await self.size.count()
        except ModelportError:
            return 0

    async def commit(self, input_tokens: int, output_tokens: int, status: str) -> None:
        if self.done:
            return
        self.done = True
        await self.manager.record_usage_durable(self.route, self.api, input_tokens, output_tokens, status)

    def cut(self, tally: calls.Tally, status: str, exc: ModelportError | None = None) -> None:
        if self.done:
            return
        self.done = True
        if isinstance(exc, TooManyRequests) and not tally.deltas:
            return  # refused by the queue: it never reached a worker
        if tally.usage is not None:  # the worker finished; the answer did not reach the client
            self.manager.record_usage(self.route, self.api, tally.usage.prompt_tokens, tally.usage.completion_tokens,
                                      status)
            return
        if not tally.deltas:
            self.manager.record_usage(self.route, self.api, 0, 0, status)
            return
        # The worker read the prompt and generated `deltas` tokens: billed with the prompt's count
        # (made before screening, or asked for now, off the request's own task).
        deltas = tally.deltas
        if self.size.prompt_tokens is not None:
            self.manager.record_usage(self.route, self.api, self.size.prompt_tokens, deltas, status)
            return

        async def count_then_record() -> None:
            self.manager.record_usage(self.route, self.api, await self.prompt_tokens(), deltas, status)

        self.manager.spawn(count_then_record())


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


async def chat(request: Request, manager: DeploymentManager, route: Route, body: dict, *,
               extra_mode: str = "error", error_shape: ErrorShape) -> Response:
    req: ChatCompletionRequest = parse(ChatCompletionRequest, body, extra_mode)
    _check_task(route, "chat-completion")
    messages = worker_messages(req.messages)
    gen = GenerateBody(
        messages=messages,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p, stop=req.stop or [], seed=req.seed, n=req.n,
        response_format=req.response_format.type if req.response_format else "text")
    return await _complete(request, manager, route, gen, req, "chat.completions", error_shape,
                           filtering.prompt_text(messages), calls.PromptSize(manager, route, messages=messages))


def worker_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """The messages as the worker receives them: content parts joined by the runtime's own
    `flatten_content` here, so that what is screened (`filtering.prompt_text`) is exactly that."""
    out = []
    for m in messages:
        item = m.model_dump(exclude_none=True)
        item["content"] = flatten_content(m.content)
        out.append(item)
    return out


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
    return await _complete(request, manager, route, gen, req, "completions", error_shape, prompt,
                           calls.PromptSize(manager, route, prompt=prompt))


async def _complete(request: Request, manager: DeploymentManager, route: Route, gen: GenerateBody, req: Any,
                    api: str, error_shape: ErrorShape, prompt_text: str, size: calls.PromptSize) -> Response:
    chat_api = api == "chat.completions"
    rid = ("chatcmpl-" if chat_api else "cmpl-") + secrets.token_hex(12)
    created = int(time.time())
    # The content filter (P4): a prompt too long for the context, or a blocked one, raises here
    # and is never generated from.
    flt = await filtering.screen_prompt(request.app.state.services.safety, route, prompt_text, size)
    events = calls.generate(manager, route, gen)
    bill = Bill(manager, route, api, size)
    if not req.stream:
        tally = calls.Tally()
        try:
            choices, usage = await unless_gone(request, calls.collect(events, gen.n, tally))
        except ClientGone:
            bill.cut(tally, "cancelled")
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except ModelportError as exc:
            bill.cut(tally, "error", exc)
            raise
        out_choices = []
        try:
            for i, c in enumerate(choices):
                text, finish = "".join(c.text), c.finish_reason
                if flt is not None:
                    text, cut = await flt.screen_text(i, text)
                    finish = "content_filter" if cut else finish
                if chat_api:
                    choice = {"index": i, "message": {"role": "assistant", "content": text},
                              "logprobs": None, "finish_reason": finish}
                else:
                    choice = {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                if flt is not None:
                    choice["content_filter_results"] = flt.results(i)
                out_choices.append(choice)
        finally:
            if flt is not None:
                await flt.close()
        filtered = any(c["finish_reason"] == "content_filter" for c in out_choices)
        # Committed before the answer leaves: an answer that was sent is billed (group commit).
        await bill.commit(usage.prompt_tokens, usage.completion_tokens, "filtered" if filtered else "success")
        out: dict[str, Any] = {
            "id": rid, "object": "chat.completion" if chat_api else "text_completion", "created": created,
            "model": route.name, "choices": out_choices,
            "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                      "total_tokens": usage.prompt_tokens + usage.completion_tokens}}
        if flt is not None:
            out["prompt_filter_results"] = flt.prompt_filter_results()
        return Response(orjson.dumps(out), media_type="application/json")

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    tally = calls.Tally()
    try:
        first = await unless_gone(request, anext(events, None))
    except ClientGone:
        await events.aclose()
        bill.cut(tally, "cancelled")
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except ModelportError as exc:
        bill.cut(tally, "error", exc)
        raise
    obj = "chat.completion.chunk" if chat_api else "text_completion"

    def chunk(choices: list[dict], usage: dict | None = None, first_chunk: bool = False) -> bytes:
        out: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": route.name, "choices": choices}
        if include_usage:
            out["usage"] = usage
        if first_chunk and flt is not None:
            out["prompt_filter_results"] = flt.prompt_filter_results()
        return _sse(out)

    def finish_choice(index: int, reason: str | None) -> dict:
        c = delta_choice(index, None if chat_api else "", reason)
        if flt is not None:
            c["content_filter_results"] = flt.results(index)
        return c

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
        cut: set[int] = set()  # choices the content filter ended
        try:
            if chat_api:
                for i in range(gen.n):
                    yield chunk([delta_choice(i, "", None, role=True)], first_chunk=i == 0)
            ev = first
            while ev is not None:
                if isinstance(ev, TextDelta):
                    tally.deltas += 1
                    if flt is None:
                        yield chunk([delta_choice(ev.index, ev.text, None)])
                    elif ev.index not in cut:
                        step = await flt.feed(ev.index, ev.text)
                        if step.text:
                            yield chunk([delta_choice(ev.index, step.text, None)])
                        if step.stop:
                            cut.add(ev.index)
                            yield chunk([finish_choice(ev.index, "content_filter")])
                            if len(cut) == gen.n:
                                break  # closing the worker stream below stops generation
                elif isinstance(ev, ChoiceFinished):
                    if flt is None:
                        yield chunk([finish_choice(ev.index, ev.finish_reason)])
                    elif ev.index not in cut:
                        step = await flt.finish(ev.index)
                        if step.text:
                            yield chunk([delta_choice(ev.index, step.text, None)])
                        if step.stop:
                            cut.add(ev.index)
                        yield chunk([finish_choice(ev.index, "content_filter" if step.stop else ev.finish_reason)])
                elif isinstance(ev, StreamUsage):
                    tally.usage = ev
                ev = await anext(events, None)
            # Without the worker's usage (every choice cut by the filter) the answer reports, and is
            # billed for, the prompt as counted before screening and the tokens generated until the cut.
            usage = tally.usage or StreamUsage(await bill.prompt_tokens(), tally.deltas)
            if include_usage:
                yield chunk([], {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                                 "total_tokens": usage.prompt_tokens + usage.completion_tokens})
            await bill.commit(usage.prompt_tokens, usage.completion_tokens, "filtered" if cut else "success")
            yield b"data: [DONE]\n\n"
        except ModelportError as exc:
            bill.cut(tally, "error", exc)
            err = orjson.loads(error_shape(exc).body)
            yield _sse(err)
        finally:
            await events.aclose()
            if flt is not None:
                await flt.close()
            bill.cut(tally, "cancelled")  # nothing if billed above: the client left mid-stream

    # Closing, not Starlette's: a stream dropped while it waits to send (a client that stopped
    # reading, cut by the server's send timeout) must give its pool slot back at once.
    return ClosingStreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def embeddings(manager: DeploymentManager, route: Route, body: dict, *, extra_mode: str = "error",
                     request: Request | None = None) -> Response:
    req: EmbeddingRequest = parse(EmbeddingRequest, body, extra_mode)
    _check_task(route, "embeddings")
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts or len(texts) > 2048 or any(not isinstance(t, str) or not t for t in texts):
        raise InvalidInput("input takes 1 to 2048 non-empty texts.", field="input")
    screened = None
    if request is not None:
        screened = await filtering.screen_inputs(request.app.state.services.safety, route, texts,
                                                 calls.PromptSize(manager, route, inputs=texts))
    vectors, prompt_tokens = await calls.embed(manager, route, texts)
    if req.dimensions is not None and vectors and req.dimensions != len(vectors[0]):
        manager.record_usage(route, "embeddings", prompt_tokens, 0, "error")
        raise InvalidInput(f"This model returns {len(vectors[0])} dimensions; omit 'dimensions' or set it to that.",
                           field="dimensions")
    await manager.record_usage_durable(route, "embeddings", prompt_tokens, 0, "success")
    out: dict[str, Any] = {
        "object": "list", "model": route.name,
        "data": [{"object": "embedding", "index": i, "embedding": calls.encode_embedding(v, req.encoding_format)}
                 for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
    if screened is not None:
        out["prompt_filter_results"] = screened
    return Response(orjson.dumps(out), media_type="application/json")
