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
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from modelport.api.responses import ClosingStreamingResponse
from modelport.errors import InvalidInput, ModelportError, TooManyRequests
from modelport.inference import admission, answers, calls, filtering, tools
from modelport.inference.manager import DeploymentManager, Route
from modelport.inference.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Message,
    split_extra,
)
from modelport.offload import run_blocking
from modelport.quotas import estimate
from modelport.runtimes.base import flatten_content
from modelport.workers.client import GenerateEvent, StreamUsage
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


def parse(model: type[BaseModel], body: dict[str, Any], extra_mode: str = "error", *, azure: bool = False) -> Any:
    """Validate a request body; `extra_mode` is Azure's extra-parameters (`error`, `drop`, `pass-through`)."""
    known, extra = split_extra(body, model)
    if extra and extra_mode == "error":
        raise InvalidInput(f"Unrecognized or unsupported request parameter: {extra[0]}. Remove it"
                           + (" or send 'extra-parameters: drop'." if azure else "."), field=extra[0])
    try:
        return model.model_validate(known)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidInput(f"Invalid value for '{where}': {err['msg']}.", field=where) from exc


def check_task(route: Route, task: str) -> None:
    if route.task != task:
        raise InvalidInput(f"Deployment '{route.name}' serves {route.task}, not {task}.", field="model")


def _sse(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chat_plan(req: ChatCompletionRequest) -> tools.Plan:
    """Tools, tool_choice and response_format -> what the worker must do (400s name the field)."""
    offered = tools.parse_tools(req.tools)
    choice = tools.parse_choice(req.tool_choice, offered)
    found = tools.plan(offered, choice, parallel=req.parallel_tool_calls, response_format=req.response_format)
    if found.grammar is not None and req.stop:
        raise InvalidInput("'stop' cannot be combined with tools or a json_schema response format: a stop sequence "
                           "could cut the answer the schema constrains. Remove 'stop'.", field="stop")
    return found


async def chat(request: Request, manager: DeploymentManager, route: Route, body: dict, *,
               extra_mode: str = "error", error_shape: ErrorShape, azure: bool = False) -> Response:
    req: ChatCompletionRequest = parse(ChatCompletionRequest, body, extra_mode, azure=azure)
    check_task(route, "chat-completion")
    found = await run_blocking(chat_plan, req)  # a schema's grammar is built off the event loop
    messages = worker_messages(req.messages)
    gen = GenerateBody(
        messages=messages,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p, stop=req.stop or [], seed=req.seed, n=req.n,
        response_format=found.response_format,  # type: ignore[arg-type]
        grammar=found.grammar, tools=found.tools,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None)
    await admission.admit(request, route, estimate.prompt_tokens([filtering.prompt_text(messages, found.tools)],
                                                                 len(messages))
                          + estimate.completion_tokens(gen.max_tokens, gen.n))
    call = Call(request, manager, route, gen, "chat.completions", error_shape,
                filtering.prompt_text(messages, found.tools),
                calls.PromptSize(manager, route, messages=messages, tools=found.tools),
                reads_calls=found.calls, logprobs=req.logprobs)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return await call.respond(stream=req.stream, include_usage=include_usage)


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
    check_task(route, "chat-completion")
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidInput("prompt takes one text here (a list of exactly one is accepted).", field="prompt")
        prompt = prompt[0]
    gen = GenerateBody(prompt=prompt, max_tokens=req.max_tokens or 16,
                       temperature=1.0 if req.temperature is None else req.temperature,
                       top_p=1.0 if req.top_p is None else req.top_p, stop=req.stop or [], seed=req.seed, n=req.n,
                       logprobs=req.logprobs)
    await admission.admit(request, route, estimate.prompt_tokens([prompt])
                          + estimate.completion_tokens(gen.max_tokens, gen.n))
    call = Call(request, manager, route, gen, "completions", error_shape, prompt,
                calls.PromptSize(manager, route, prompt=prompt), reads_calls=False,
                logprobs=req.logprobs is not None)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return await call.respond(stream=req.stream, include_usage=include_usage)


def legacy_logprobs(tokens: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """The completions API's logprobs shape, from the per-token objects."""
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        out["tokens"].append(t["token"])
        out["token_logprobs"].append(t["logprob"])
        out["top_logprobs"].append({a["token"]: a["logprob"] for a in t["top_logprobs"]})
        out["text_offset"].append(offset)
        offset += len(t["token"])
    return out


@dataclass
class ChoiceOut:
    """One choice of a non-streamed answer, assembled from the pipeline's events."""

    text: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None

    def take(self, piece: tools.Piece) -> None:
        if isinstance(piece, tools.Content):
            self.text.append(piece.text)
            self.logprobs += piece.logprobs or []
        elif isinstance(piece, tools.CallStart):
            self.calls.append({"id": piece.id, "type": "function", "function": {"name": piece.name, "arguments": ""}})
        else:
            self.calls[piece.index]["function"]["arguments"] += piece.text


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

    async def final_usage(self, usage: StreamUsage | None, deltas: int) -> StreamUsage:
        """The worker's usage; without it (every choice cut by the filter) the prompt as counted
        before screening and the tokens generated until the cut: what the answer reports and bills."""
        return usage if usage is not None else StreamUsage(await self.prompt_tokens(), deltas)

    async def commit(self, input_tokens: int, output_tokens: int, status: str) -> None:
        if self.done:
            return
        self.done = True
        await self.manager.record_usage_durable(self.route, self.api, input_tokens, output_tokens, status)

    def cut(self, deltas: int, usage: StreamUsage | None, status: str, exc: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        if isinstance(exc, TooManyRequests) and not deltas:
            return  # refused by the queue: it never reached a worker
        if usage is not None:  # the worker finished; the answer did not reach the client
            self.manager.record_usage(self.route, self.api, usage.prompt_tokens, usage.completion_tokens, status)
            return
        if not deltas:
            self.manager.record_usage(self.route, self.api, 0, 0, status)
            return
        # The worker read the prompt and generated `deltas` tokens: billed with the prompt's count
        # (made before screening, or asked for now, off the request's own task).
        if self.size.prompt_tokens is not None:
            self.manager.record_usage(self.route, self.api, self.size.prompt_tokens, deltas, status)
            return

        async def count_then_record() -> None:
            self.manager.record_usage(self.route, self.api, await self.prompt_tokens(), deltas, status)

        self.manager.spawn(count_then_record())


@dataclass
class Call:
    """One generating request: screening, the worker's stream through the answer pipeline,
    metering, and disconnects; `respond` shapes it for chat or completions."""

    request: Request
    manager: DeploymentManager
    route: Route
    gen: GenerateBody
    api: str  # chat.completions | completions | responses (the metering label)
    error_shape: ErrorShape
    prompt_text: str
    size: calls.PromptSize
    reads_calls: bool
    logprobs: bool

    async def start(self, *, buffered: bool | None) -> tuple[answers.Answers, AsyncIterator[GenerateEvent]]:
        # The content filter (P4): a prompt too long for the context, or a blocked one, raises here
        # and is never generated from.
        flt = await filtering.screen_prompt(self.request.app.state.services.safety, self.route, self.prompt_text,
                                            self.size)
        pipeline = answers.Answers(flt, self.gen.n, calls=self.reads_calls, logprobs=self.logprobs, buffered=buffered)
        self.bill = Bill(self.manager, self.route, self.api, self.size)
        return pipeline, calls.generate(self.manager, self.route, self.gen)

    async def collect(self) -> tuple[list[ChoiceOut], StreamUsage, filtering.RequestFilter | None] | Response:
        """The whole answer (never streamed: always screened `buffered`), or a 499 when the client left."""
        pipeline, events = await self.start(buffered=True)
        out = [ChoiceOut() for _ in range(self.gen.n)]
        usage: StreamUsage | None = None

        async def run() -> None:
            nonlocal usage
            async for ev in pipeline.run(events):
                if isinstance(ev, answers.Part):
                    out[ev.index].take(ev.piece)
                elif isinstance(ev, answers.Finished):
                    out[ev.index].finish_reason = ev.reason
                else:
                    usage = ev

        try:
            await unless_gone(self.request, run())
        except ClientGone:
            self.bill.cut(pipeline.deltas, usage, "cancelled")
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except ModelportError as exc:
            self.bill.cut(pipeline.deltas, usage, "error", exc)
            raise
        finally:
            await events.aclose()
            if pipeline.flt is not None:
                await pipeline.flt.close()
        return out, await self.bill.final_usage(usage, pipeline.deltas), pipeline.flt

    async def respond(self, *, stream: bool, include_usage: bool) -> Response:
        chat_api = self.api == "chat.completions"
        rid = ("chatcmpl-" if chat_api else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        if not stream:
            got = await self.collect()
            if isinstance(got, Response):
                return got
            choices, usage, flt = got
            out_choices = []
            for i, c in enumerate(choices):
                text = "".join(c.text)
                if chat_api:
                    message: dict[str, Any] = {"role": "assistant", "content": text if text or not c.calls else None}
                    if c.calls:
                        message["tool_calls"] = c.calls
                    choice: dict[str, Any] = {
                        "index": i, "message": message, "finish_reason": c.finish_reason,
                        "logprobs": {"content": c.logprobs, "refusal": None} if self.logprobs else None}
                else:
                    choice = {"index": i, "text": text, "finish_reason": c.finish_reason,
                              "logprobs": legacy_logprobs(c.logprobs, 0) if self.logprobs else None}
                if flt is not None:
                    choice["content_filter_results"] = flt.results(i)
                out_choices.append(choice)
            body: dict[str, Any] = {
                "id": rid, "object": "chat.completion" if chat_api else "text_completion", "created": created,
                "model": self.route.name, "choices": out_choices,
                "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                          "total_tokens": usage.prompt_tokens + usage.completion_tokens}}
            if flt is not None:
                body["prompt_filter_results"] = flt.prompt_filter_results()
            # Committed before the answer leaves: an answer that was sent is billed (group commit).
            filtered = any(c["finish_reason"] == "content_filter" for c in out_choices)
            await self.bill.commit(usage.prompt_tokens, usage.completion_tokens, "filtered" if filtered else "success")
            return Response(orjson.dumps(body), media_type="application/json")
        return await self._stream(rid, created, include_usage)

    async def _stream(self, rid: str, created: int, include_usage: bool) -> Response:
        chat_api = self.api == "chat.completions"
        route, n = self.route, self.gen.n
        pipeline, events = await self.start(buffered=None)
        bill = self.bill
        flt = pipeline.flt
        run = pipeline.run(events)
        try:
            first = await unless_gone(self.request, anext(run, None))
        except ClientGone:
            await run.aclose()
            await events.aclose()
            if flt is not None:
                await flt.close()
            self.bill.cut(pipeline.deltas, None, "cancelled")
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except BaseException as exc:
            await events.aclose()
            if flt is not None:
                await flt.close()
            self.bill.cut(pipeline.deltas, None, "error", exc)
            raise
        obj = "chat.completion.chunk" if chat_api else "text_completion"
        offsets = [0] * n

        def chunk(choices: list[dict], usage: dict | None = None, first_chunk: bool = False) -> bytes:
            out: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": route.name,
                                   "choices": choices}
            if include_usage:
                out["usage"] = usage
            if first_chunk and flt is not None:
                out["prompt_filter_results"] = flt.prompt_filter_results()
            return _sse(out)

        def piece_choice(index: int, piece: tools.Piece) -> dict:
            if not chat_api:
                assert isinstance(piece, tools.Content)
                lps = legacy_logprobs(piece.logprobs or [], offsets[index]) if self.logprobs else None
                offsets[index] += len(piece.text)
                return {"index": index, "text": piece.text, "logprobs": lps, "finish_reason": None}
            delta: dict[str, Any] = {}
            lps = None
            if isinstance(piece, tools.Content):
                delta["content"] = piece.text
                if self.logprobs:
                    lps = {"content": piece.logprobs or [], "refusal": None}
            elif isinstance(piece, tools.CallStart):
                delta["tool_calls"] = [{"index": piece.index, "id": piece.id, "type": "function",
                                        "function": {"name": piece.name, "arguments": ""}}]
            else:
                delta["tool_calls"] = [{"index": piece.index, "function": {"arguments": piece.text}}]
            return {"index": index, "delta": delta, "logprobs": lps, "finish_reason": None}

        def finish_choice(index: int, reason: str) -> dict:
            c: dict[str, Any] = ({"index": index, "delta": {}, "logprobs": None, "finish_reason": reason} if chat_api
                                 else {"index": index, "text": "", "logprobs": None, "finish_reason": reason})
            if flt is not None:
                c["content_filter_results"] = flt.results(index)
            return c

        async def stream() -> AsyncIterator[bytes]:
            worker_usage: StreamUsage | None = None
            filtered = False
            try:
                if chat_api:
                    for i in range(n):
                        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                      "finish_reason": None}], first_chunk=i == 0)
                ev = first
                while ev is not None:
                    if isinstance(ev, answers.Part):
                        yield chunk([piece_choice(ev.index, ev.piece)])
                    elif isinstance(ev, answers.Finished):
                        filtered = filtered or ev.reason == "content_filter"
                        yield chunk([finish_choice(ev.index, ev.reason)])
                    else:
                        worker_usage = ev
                    ev = await anext(run, None)
                usage = await bill.final_usage(worker_usage, pipeline.deltas)
                if include_usage:
                    yield chunk([], {"prompt_tokens": usage.prompt_tokens,
                                     "completion_tokens": usage.completion_tokens,
                                     "total_tokens": usage.prompt_tokens + usage.completion_tokens})
                # committed before the last byte: a stream whose [DONE] was sent is billed
                await bill.commit(usage.prompt_tokens, usage.completion_tokens, "filtered" if filtered else "success")
                yield b"data: [DONE]\n\n"
            except ModelportError as exc:
                bill.cut(pipeline.deltas, worker_usage, "error", exc)
                yield _sse(orjson.loads(self.error_shape(exc).body))
            finally:
                await run.aclose()
                await events.aclose()
                if flt is not None:
                    await flt.close()
                # the client left mid-stream (nothing if billed above): its prompt and what was generated
                bill.cut(pipeline.deltas, worker_usage, "cancelled")

        # Closing, not Starlette's: a stream dropped while it waits to send (a client that stopped
        # reading, cut by the server's send timeout) must give its pool slot back at once.
        return ClosingStreamingResponse(stream(), media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def embeddings(manager: DeploymentManager, route: Route, body: dict, *, request: Request,
                     extra_mode: str = "error", azure: bool = False) -> Response:
    req: EmbeddingRequest = parse(EmbeddingRequest, body, extra_mode, azure=azure)
    check_task(route, "embeddings")
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts or len(texts) > 2048 or any(not isinstance(t, str) or not t for t in texts):
        raise InvalidInput("input takes 1 to 2048 non-empty texts.", field="input")
    await admission.admit(request, route, estimate.prompt_tokens(texts))
    screened = await filtering.screen_inputs(request.app.state.services.safety, route, texts,
                                             calls.PromptSize(manager, route, inputs=texts))
    vectors, prompt_tokens = await calls.embed(manager, route, texts)
    if req.dimensions is not None and vectors and req.dimensions != len(vectors[0]):
        manager.record_usage(route, "embeddings", prompt_tokens, 0, "error")
        raise InvalidInput(f"This model returns {len(vectors[0])} dimensions; omit 'dimensions' or set it to that.",
                           field="dimensions")
    await manager.record_usage_durable(route, "embeddings", prompt_tokens, 0, "success")  # before the answer
    out: dict[str, Any] = {
        "object": "list", "model": route.name,
        "data": [{"object": "embedding", "index": i, "embedding": calls.encode_embedding(v, req.encoding_format)}
                 for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
    if screened is not None:
        out["prompt_filter_results"] = screened
    return Response(orjson.dumps(out), media_type="application/json")
