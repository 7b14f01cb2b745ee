"""Chat, completions and embeddings, shared by the OpenAI and Azure surfaces.

Top to bottom: `chat`, `completions` and `embeddings` parse, plan and admit a request; a `Call`
runs a generating one (screening, the worker's events through the answer pipeline of
answers.py, metering) and answers it whole (`Call.answer`, through builders.py's
`chat_completion` / `text_completion`) or streamed (`Call.stream`, through builders.py's chunk
writers). The shapes are the typed answers of protocol.py.

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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from modelport.api.responses import ClosingStreamingResponse
from modelport.errors import InvalidInput, ModelportError, TooManyRequests
from modelport.inference import admission, answers, calls, filtering, tools
from modelport.inference.builders import (
    DONE,
    STREAM_HEADERS,
    ChatChunks,
    ChoiceOut,
    CompletionChunks,
    chat_completion,
    sse,
    text_completion,
)
from modelport.inference.gateway import Gateway
from modelport.inference.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    Message,
    split_extra,
)
from modelport.inference.routing import Route
from modelport.inference.wire_errors import ErrorShape
from modelport.offload import run_blocking
from modelport.quotas import estimate
from modelport.runtimes.base import flatten_content
from modelport.workers.client import GenerateEvent, StreamUsage, Ticket
from modelport.workers.protocol import GenerateBody

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


def chat_plan(req: ChatCompletionRequest) -> tools.Plan:
    """Tools, tool_choice and response_format -> what the worker must do (400s name the field)."""
    offered = tools.parse_tools(req.tools)
    choice = tools.parse_choice(req.tool_choice, offered)
    found = tools.plan(offered, choice, parallel=req.parallel_tool_calls, response_format=req.response_format)
    if found.grammar is not None and req.stop:
        raise InvalidInput("'stop' cannot be combined with tools or a json_schema response format: a stop sequence "
                           "could cut the answer the schema constrains. Remove 'stop'.", field="stop")
    return found


async def chat(request: Request, gateway: Gateway, route: Route, body: dict, *,
               extra_mode: str = "error", error_shape: ErrorShape, azure: bool = False) -> Response:
    req: ChatCompletionRequest = parse(ChatCompletionRequest, body, extra_mode, azure=azure)
    check_task(route, "chat-completion")
    call = await chat_call(request, gateway, route, req, "chat.completions", error_shape)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return await call.respond(stream=req.stream, include_usage=include_usage)


async def chat_call(request: Request, gateway: Gateway, route: Route, req: ChatCompletionRequest,
                    api: str, error_shape: ErrorShape) -> Call:
    """A chat request planned (tools, structured output), admitted and ready to run: for chat
    completions, and for the Responses API's request once made a chat request."""
    if req.tools or (req.response_format is not None and req.response_format.type == "json_schema"):
        found = await run_blocking(chat_plan, req)  # a grammar is built off the event loop
    else:  # nothing to build: the hop to a thread alone cost more CPU than the whole plan
        found = chat_plan(req)
    messages = worker_messages(req.messages)
    gen = GenerateBody(
        messages=messages,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p, stop=req.stops, seed=req.seed, n=req.n,
        response_format=found.response_format,
        grammar=found.grammar, tools=found.tools,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None)
    prompt_text = filtering.prompt_text(messages, found.tools)
    await admission.admit(request, route, estimate.prompt_tokens([prompt_text], len(messages))
                          + estimate.completion_tokens(gen.max_tokens, gen.n))
    return Call(request, gateway, route, gen, api, error_shape, prompt_text,
                calls.PromptSize(gateway, route, messages=messages, tools=found.tools),
                reads_calls=found.calls, logprobs=req.logprobs)


def worker_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """The messages as the worker receives them: content parts joined by the runtime's own
    `flatten_content` here, so that what is screened (`filtering.prompt_text`) is exactly that."""
    out = []
    for m in messages:
        item = m.model_dump(exclude_none=True)
        item["content"] = flatten_content(m.content)
        out.append(item)
    return out


async def completions(request: Request, gateway: Gateway, route: Route, body: dict, *,
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
                       top_p=1.0 if req.top_p is None else req.top_p, stop=req.stops, seed=req.seed, n=req.n,
                       logprobs=req.logprobs)
    await admission.admit(request, route, estimate.prompt_tokens([prompt])
                          + estimate.completion_tokens(gen.max_tokens, gen.n))
    call = Call(request, gateway, route, gen, "completions", error_shape, prompt,
                calls.PromptSize(gateway, route, prompt=prompt), reads_calls=False,
                logprobs=req.logprobs is not None)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return await call.respond(stream=req.stream, include_usage=include_usage)


@dataclass
class Collected:
    """What a non-streamed answer gathered so far (kept when it ends early, for the bill)."""

    choices: list[ChoiceOut]
    usage: StreamUsage | None = None


#: how long the gateway waits for a worker to stop a cut generation and say what it generated
REPORT_TIMEOUT_SECONDS = 2.0


class Bill:
    """The one usage event of one generation request: committed before the answer's last byte
    (`commit`), or, for a request that ended early (client gone, worker lost), queued with what
    the worker generated until then (`cut`). Whichever comes first wins; the other does nothing.

    A generation that ends without the worker's usage is billed what its worker generated: the
    gateway stops it and asks (`Ticket.generated`, one round trip to the worker, at most
    REPORT_TIMEOUT_SECONDS), which counts the tokens the gateway never read (generated after its
    last read, held back for stop sequences or unfinished characters, in the socket buffers). A
    worker that cannot answer (it crashed) leaves what it last reported in the deltas read."""

    def __init__(self, gateway: Gateway, route: Route, api: str, size: calls.PromptSize) -> None:
        self.gateway, self.route, self.api, self.size = gateway, route, api, size
        self.ticket = Ticket()
        self.done = False

    async def prompt_tokens(self) -> int:
        """The prompt's tokens as counted before screening; counted now if it was not (0 if it cannot be)."""
        try:
            return await self.size.count()
        except ModelportError:
            return 0

    async def generated(self, reported: int) -> int:
        """The completion tokens the worker generated (it is stopped first), or `reported` (what
        the deltas read said) when it cannot tell in time."""
        counted = await self.ticket.generated(REPORT_TIMEOUT_SECONDS)
        return reported if counted is None else max(counted, reported)

    async def final_usage(self, usage: StreamUsage | None, reported: int) -> StreamUsage:
        """The worker's usage; without it (every choice cut by the filter) the prompt as counted
        before screening and the tokens the worker generated until it was stopped: what the
        answer reports and bills."""
        if usage is not None:
            return usage
        return StreamUsage(await self.prompt_tokens(), await self.generated(reported))

    async def commit(self, input_tokens: int, output_tokens: int, status: str) -> None:
        if self.done:
            return
        self.done = True
        await self.gateway.record_usage_durable(self.route, self.api, input_tokens, output_tokens, status)

    def cut(self, reported: int, usage: StreamUsage | None, status: str, exc: BaseException | None = None) -> None:
        """Bill a request that ended early; `reported` is the completion tokens its deltas read so
        far showed. Never waits: what the worker has to say is asked off the request's task."""
        if self.done:
            return
        self.done = True
        if isinstance(exc, TooManyRequests) and not reported:
            return  # refused by the queue: it never reached a worker
        if usage is not None:  # the worker finished; the answer did not reach the client
            self.gateway.record_usage(self.route, self.api, usage.prompt_tokens, usage.completion_tokens, status)
            return
        if self.ticket.client is None and not reported:  # it never reached a worker
            self.gateway.record_usage(self.route, self.api, 0, 0, status)
            return
        self.gateway.spawn(self._settle(reported, status))

    async def _settle(self, reported: int, status: str) -> None:
        """Ask the worker what it generated, then record: the prompt (its count made before
        screening, or asked for now) and those tokens; nothing generated, nothing billed. The
        event is recorded even when shutdown cancels this task (with what is known by then)."""
        completion, prompt = reported, self.size.prompt_tokens
        try:
            completion = await self.generated(reported)
            if completion and prompt is None:
                prompt = await self.prompt_tokens()
        finally:
            self.gateway.record_usage(self.route, self.api, (prompt or 0) if completion else 0, completion, status)


@dataclass
class Running:
    """A started generation: the worker's events (`events`) read through the answer pipeline (`run`)."""

    pipeline: answers.Answers
    events: AsyncGenerator[GenerateEvent, None]
    run: AsyncGenerator[answers.Event, None]

    async def close(self, *, pipeline: bool = True) -> None:
        """Stop reading (the worker stops generating) and close the content filter's streams."""
        if pipeline:
            await self.run.aclose()
        await self.events.aclose()
        if self.pipeline.flt is not None:
            await self.pipeline.flt.close()


@dataclass
class Call:
    """One generating request: screening, the worker's stream through the answer pipeline,
    metering, and disconnects. `respond` answers it whole (`answer`, through a builder of the
    response shape) or streamed (`stream`, through a chunk writer)."""

    request: Request
    gateway: Gateway
    route: Route
    gen: GenerateBody
    api: str  # chat.completions | completions | responses (the metering label)
    error_shape: ErrorShape
    prompt_text: str
    size: calls.PromptSize
    reads_calls: bool
    logprobs: bool
    bill: Bill = field(init=False)

    def __post_init__(self) -> None:
        self.bill = Bill(self.gateway, self.route, self.api, self.size)

    async def start(self, *, buffered: bool | None) -> Running:
        # The content filter (P4): a prompt too long for the context, or a blocked one, raises here
        # and is never generated from.
        flt = await filtering.screen_prompt(self.request.app.state.services.safety, self.route, self.prompt_text,
                                            self.size)
        pipeline = answers.Answers(flt, self.gen.n, calls=self.reads_calls, logprobs=self.logprobs, buffered=buffered)
        events = calls.generate(self.gateway, self.route, self.gen, self.bill.ticket)
        return Running(pipeline, events, pipeline.run(events))

    async def collect(self) -> tuple[list[ChoiceOut], StreamUsage, filtering.RequestFilter | None] | Response:
        """The whole answer (never streamed: always screened `buffered`), or a 499 when the client left."""
        running = await self.start(buffered=True)
        pipeline = running.pipeline
        got = Collected([ChoiceOut() for _ in range(self.gen.n)])
        try:
            await unless_gone(self.request, _gather(running.run, got))
        except ClientGone:
            self.bill.cut(pipeline.reported, got.usage, "cancelled")
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except ModelportError as exc:
            self.bill.cut(pipeline.reported, got.usage, "error", exc)
            raise
        finally:
            await running.close(pipeline=False)
        return got.choices, await self.bill.final_usage(got.usage, pipeline.reported), pipeline.flt

    async def respond(self, *, stream: bool, include_usage: bool) -> Response:
        rid = ("chatcmpl-" if self.api == "chat.completions" else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        if stream:
            return await self.stream(rid, created, include_usage)
        return await self.answer(rid, created)

    async def answer(self, rid: str, created: int) -> Response:
        """The whole answer as one JSON object, billed before it leaves."""
        got = await self.collect()
        if isinstance(got, Response):
            return got
        choices, usage, flt = got
        build = chat_completion if self.api == "chat.completions" else text_completion
        body = build(rid, created, self.route.name, choices, usage, flt, logprobs=self.logprobs)
        # Committed before the answer leaves: an answer that was sent is billed (group commit).
        filtered = any(c.finish_reason == "content_filter" for c in choices)
        await self.bill.commit(usage.prompt_tokens, usage.completion_tokens, "filtered" if filtered else "success")
        return Response(orjson.dumps(body), media_type="application/json")

    async def first_event(self, running: Running) -> answers.Event | Response | None:
        """The pipeline's first event, read before the stream's status line (so that errors before
        any output keep their HTTP status), or a 499 when the client left first."""
        try:
            return await unless_gone(self.request, anext(running.run, None))
        except ClientGone:
            await running.close()
            self.bill.cut(running.pipeline.reported, None, "cancelled")
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except BaseException as exc:
            await running.close(pipeline=False)
            self.bill.cut(running.pipeline.reported, None, "error", exc)
            raise

    async def stream(self, rid: str, created: int, include_usage: bool) -> Response:
        """Server-sent chunks, started once the first event is there."""
        running = await self.start(buffered=None)
        first = await self.first_event(running)
        if isinstance(first, Response):
            return first
        writer_class = ChatChunks if self.api == "chat.completions" else CompletionChunks
        writer = writer_class(rid, created, self.route.name, running.pipeline.flt, include_usage=include_usage,
                              logprobs=self.logprobs)
        # Closing, not Starlette's: a stream dropped while it waits to send (a client that stopped
        # reading, cut by the server's send timeout) must give its pool slot back at once.
        return ClosingStreamingResponse(self._sse(running, first, writer), media_type="text/event-stream",
                                        headers=STREAM_HEADERS)

    async def _sse(self, running: Running, first: answers.Event | None,
                   writer: ChatChunks | CompletionChunks) -> AsyncIterator[bytes]:
        pipeline = running.pipeline
        worker_usage: StreamUsage | None = None
        filtered = False
        try:
            for opening in writer.opening(self.gen.n):
                yield opening
            ev = first
            while ev is not None:
                if isinstance(ev, answers.Part):
                    yield writer.piece(ev.index, ev.piece)
                elif isinstance(ev, answers.Finished):
                    filtered = filtered or ev.reason == "content_filter"
                    yield writer.finish(ev.index, ev.reason)
                else:
                    worker_usage = ev
                ev = await anext(running.run, None)
            usage = await self.bill.final_usage(worker_usage, pipeline.reported)
            if writer.include_usage:
                yield writer.usage(usage)
            # committed before the last byte: a stream whose [DONE] was sent is billed
            await self.bill.commit(usage.prompt_tokens, usage.completion_tokens, "filtered" if filtered else "success")
            yield DONE
        except ModelportError as exc:
            self.bill.cut(pipeline.reported, worker_usage, "error", exc)
            yield sse(self.error_shape.body(exc))
        finally:
            await running.close()
            # the client left mid-stream (nothing if billed above): its prompt and what was generated
            self.bill.cut(pipeline.reported, worker_usage, "cancelled")


async def _gather(run: AsyncIterator[answers.Event], into: Collected) -> None:
    async for ev in run:
        if isinstance(ev, answers.Part):
            into.choices[ev.index].take(ev.piece)
        elif isinstance(ev, answers.Finished):
            into.choices[ev.index].finish_reason = ev.reason
        else:
            into.usage = ev


async def embeddings(gateway: Gateway, route: Route, body: dict, *, request: Request,
                     extra_mode: str = "error", azure: bool = False) -> Response:
    req: EmbeddingRequest = parse(EmbeddingRequest, body, extra_mode, azure=azure)
    check_task(route, "embeddings")
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts or len(texts) > 2048 or any(not isinstance(t, str) or not t for t in texts):
        raise InvalidInput("input takes 1 to 2048 non-empty texts.", field="input")
    await admission.admit(request, route, estimate.prompt_tokens(texts))
    screened = await filtering.screen_inputs(request.app.state.services.safety, route, texts,
                                             calls.PromptSize(gateway, route, inputs=texts))
    vectors, prompt_tokens = await calls.embed(gateway, route, texts)
    if req.dimensions is not None and vectors and req.dimensions != len(vectors[0]):
        gateway.record_usage(route, "embeddings", prompt_tokens, 0, "error")
        raise InvalidInput(f"This model returns {len(vectors[0])} dimensions; omit 'dimensions' or set it to that.",
                           field="dimensions")
    await gateway.record_usage_durable(route, "embeddings", prompt_tokens, 0, "success")  # before the answer
    out = EmbeddingList(object="list", model=route.name,
                        data=[Embedding(object="embedding", index=i,
                                        embedding=calls.encode_embedding(v, req.encoding_format))
                              for i, v in enumerate(vectors)],
                        usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens))
    if screened is not None:
        out["prompt_filter_results"] = screened
    return Response(orjson.dumps(out), media_type="application/json")
