"""The worker's HTTP server: one loaded runtime behind the routes of `protocol.py`.

A runtime that decodes one sequence at a time takes `model_lock` for generation and
embedding; a runtime that batches (`max_concurrent_generations` above 1, llamacpp) lets that many
generations in at once (`generation_slots`), each read on a thread of its own while the runtime's
engine decodes them together. Requests beyond `max_queue` waiting get 429. The runtime hands
events to the event loop one by one; the event loop writes them to the client and, when the
client is gone (a failed write, or aiohttp cancelling the handler on disconnect), sets the
request's cancel event, which the runtime checks before every token. A slot (or the lock) is
released only when the runtime thread has really stopped, so a cancelled request can never
overlap the next one on the same sequence.

Embeddings are batched across requests (`EmbedBatcher`): while the model embeds one batch,
requests that arrive wait together and go as the next batch, in one call of the runtime.

A generation the gateway names (`id`) can be stopped by `POST /cancel`, which answers once it
has stopped with the tokens it generated: each generation's tokens are counted per choice on
its model thread (`_Generation`), from the runtime's own counts, so the answer includes tokens
never sent (held back for stop sequences, queued behind a slow reader). The counts of the last
CANCEL_MEMORY generations stay known after they end, for a /cancel that comes late.

SIGTERM: stop taking requests (503), give in-flight ones `drain_seconds`, then cancel what is
left and end each of those streams with an explicit error event.

Privacy (P1): nothing here logs or echoes request content; validation errors name the field
and the rule, never the value.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from modelport import errors
from modelport.runtimes.base import Delta, GenerateRequest, Runtime
from modelport.workers.isolation import host_pid
from modelport.workers.protocol import (
    CANCEL_MEMORY,
    CancelBody,
    EmbedBody,
    GenerateBody,
    Health,
    TokenCount,
    TokenizeBody,
    WorkerSpec,
    encode_event,
    error_body,
    logprobs_wire,
)

_SHUTDOWN_MESSAGE = "the model worker was stopped before this request finished; retry the request"
_NDJSON = {"Content-Type": "application/x-ndjson"}
#: how long /cancel waits for a generation to stop (a runtime checks its cancel event every token)
CANCEL_WAIT_SECONDS = 5.0


class _Generation:
    """One /generate request: its cancel event, its model thread (`producer`, once admitted),
    and the tokens generated per choice, written by the model thread as the runtime reports them."""

    __slots__ = ("cancel", "producer", "tokens")

    def __init__(self, n: int) -> None:
        self.cancel = threading.Event()
        self.producer: asyncio.Future[Any] | None = None
        self.tokens = [0] * n

    def see(self, index: int, delta: Delta) -> None:
        if delta.usage is not None:  # finished, or cancelled: the runtime's own count
            self.tokens[index] = delta.usage.completion_tokens
        elif delta.generated is not None:
            self.tokens[index] = max(self.tokens[index], delta.generated)
        elif delta.text:  # a runtime that does not count: at least one token a delta
            self.tokens[index] += 1

    @property
    def total(self) -> int:
        return sum(self.tokens)


class _EventStream(web.StreamResponse):
    """The NDJSON answer of /generate. Its headers leave with the first events, in one write
    (aiohttp's StreamResponse sends them alone at prepare(), which costs the gateway one more
    wakeup per request; `_send_headers_immediately` is the switch aiohttp's own Response uses)."""

    _send_headers_immediately = False


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(exc: errors.ModelportError) -> web.Response:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, errors.TooManyRequests) else None
    response = _json(error_body(exc), status=exc.status_code)
    if headers:
        response.headers.update(headers)
    return response


def _invalid(exc: ValidationError) -> errors.InvalidInput:
    first = exc.errors(include_input=False, include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    return errors.InvalidInput(f"{field or 'body'}: {first['msg']}", field=field)


async def _parse(request: web.Request, model: type[BaseModel]) -> Any:
    raw = await request.read()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None  # `from None`: the chained error would carry the input


class WorkerServer:
    """State and handlers of one worker; `app()` builds the aiohttp application."""

    def __init__(self, runtime: Runtime, spec: WorkerSpec) -> None:
        self.runtime = runtime
        self.spec = spec
        self.model_lock = asyncio.Lock()
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        parallel = runtime.max_concurrent_generations
        # a batching runtime: `parallel` generations at once, each read on its own thread
        self.generation_slots: asyncio.Lock | asyncio.Semaphore = (
            asyncio.Semaphore(parallel) if parallel > 1 else self.model_lock)
        self._generate_threads = (ThreadPoolExecutor(parallel, thread_name_prefix="generate") if parallel > 1
                                  else self._model_thread)
        self.embedder = EmbedBatcher(self)
        self._tokenize_thread = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        self.active_generations = 0
        self.queued = 0
        self.requests_total = 0
        self.draining = False
        self.shutting_down = False
        self._cancels: set[threading.Event] = set()
        self._generations: dict[str, _Generation] = {}  # by the gateway's id, while in flight
        self._ended: OrderedDict[str, int] = OrderedDict()  # id -> completion tokens, the last CANCEL_MEMORY
        self._netns_inode = os.stat("/proc/self/ns/net").st_ino

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_get("/health", self.health)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/generate", self.generate)
        app.router.add_post("/cancel", self.cancel)
        app.router.add_post("/embed", self.embed)
        return app

    # -- health and counting ----------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        info = Health(
            status="draining" if self.draining else "ready", pid=host_pid(), uid=os.getuid(),
            model_id=self.spec.model_id, runtime=self.runtime.name,
            tasks=sorted(self.runtime.supported_tasks), context_length=self.runtime.context_length,
            active_generations=self.active_generations, queued=self.queued,
            tokens_generated_total=self.runtime.tokens_generated_total,
            requests_total=self.requests_total, netns_inode=self._netns_inode,
            counters={**self.runtime.counters(), **self.embedder.counters()},
        )
        return web.Response(body=info.model_dump_json(), content_type="application/json")

    async def tokenize(self, request: web.Request) -> web.Response:
        try:
            body: TokenizeBody = await _parse(request, TokenizeBody)
            loop = asyncio.get_running_loop()
            if body.input is not None:
                counts = await loop.run_in_executor(self._tokenize_thread, self.runtime.count_input_tokens,
                                                    body.input)
                result = TokenCount(count=sum(counts), counts=counts,
                                    context_length=self.runtime.context_length)
            else:
                if (body.messages is None) == (body.prompt is None):
                    raise errors.InvalidInput("give exactly one of messages, prompt and input",
                                              field="messages")
                count = await loop.run_in_executor(
                    self._tokenize_thread,
                    lambda: self.runtime.count_tokens(messages=body.messages, prompt=body.prompt,
                                                      **({"tools": body.tools} if body.tools else {})))
                result = TokenCount(count=count, context_length=self.runtime.context_length)
        except errors.ModelportError as exc:
            return _error(exc)
        return web.Response(body=result.model_dump_json(), content_type="application/json")

    # -- admission --------------------------------------------------------------------------

    def _check_admission(self) -> None:
        if self.draining:
            raise errors.ServiceUnavailable("the model worker is shutting down; retry the request")
        if self.queued >= self.spec.max_queue:
            raise errors.TooManyRequests("the model is busy: too many requests are waiting; retry shortly")

    async def _admit(self, lock: asyncio.Lock | asyncio.Semaphore) -> None:
        """Wait for the model (or a generation slot); raise when draining or when too many are
        already waiting."""
        self._check_admission()
        self.requests_total += 1
        self.queued += 1
        try:
            await lock.acquire()
        finally:
            self.queued -= 1
        if self.shutting_down:
            lock.release()
            raise errors.ServiceUnavailable("the model worker is shutting down; retry the request")

    def _run_locked(self, fn: Callable[[], Any], lock: asyncio.Lock | asyncio.Semaphore,
                    executor: ThreadPoolExecutor) -> asyncio.Future[Any]:
        """Run fn on a model thread; the lock is released when the thread is done with it."""
        future = asyncio.get_running_loop().run_in_executor(executor, fn)
        future.add_done_callback(lambda _: lock.release())
        return future

    # -- embeddings -------------------------------------------------------------------------

    async def embed(self, request: web.Request) -> web.Response:
        try:
            body: EmbedBody = await _parse(request, EmbedBody)
            self._check_admission()
            self.requests_total += 1
            self.queued += 1
            try:
                # shield: a client that goes away must not cut a batch other requests share
                vectors, prompt_tokens = await asyncio.shield(self.embedder.embed(body.input))
            finally:
                self.queued -= 1
        except errors.ModelportError as exc:
            return _error(exc)
        return _json({"data": vectors, "prompt_tokens": prompt_tokens})

    # -- generation -------------------------------------------------------------------------

    def _produce(self, body: GenerateBody, gen: _Generation,
                 push: Callable[[tuple[Any, ...]], None]) -> None:
        """Model thread: run the choices (together where the runtime batches), count their
        tokens, push ("delta", i, Delta) items, then ("end",)."""
        cancel = gen.cancel
        try:
            request = GenerateRequest(
                messages=body.messages, prompt=body.prompt, max_tokens=body.max_tokens,
                temperature=body.temperature, top_p=body.top_p, stop=tuple(body.stop), seed=body.seed,
                response_format=body.response_format, grammar=body.grammar, logprobs=body.logprobs,
                tools=body.tools,
            )
            for index, delta in self.runtime.generate_choices(request, body.n, cancel):
                gen.see(index, delta)
                if not delta.cancelled:  # a count only, for /cancel
                    push(("delta", index, delta))
            push(("end",))
        except errors.ModelportError as exc:
            push(("error", exc))
        except Exception as exc:  # a runtime bug: say what kind, never the message (may hold data)
            push(("error", errors.InternalError(f"the model runtime failed ({type(exc).__name__})")))

    def _forget(self, gid: str | None, gen: _Generation) -> None:
        """A generation has ended: keep only its count, for a /cancel that comes late."""
        if gid is None or self._generations.get(gid) is not gen:
            return
        del self._generations[gid]
        self._ended[gid] = gen.total
        while len(self._ended) > CANCEL_MEMORY:
            self._ended.popitem(last=False)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        try:
            body: GenerateBody = await _parse(request, GenerateBody)
        except errors.ModelportError as exc:
            return _error(exc)
        gid = body.id
        gen = _Generation(body.n)
        if gid is not None:
            if gid in self._generations or gid in self._ended:
                return _error(errors.InvalidInput("id: another generation has this id; use a fresh one",
                                                  field="id"))
            self._generations[gid] = gen
        try:
            await self._admit(self.generation_slots)
            if gen.cancel.is_set():  # cancelled while it waited: it generated nothing
                self.generation_slots.release()
                raise errors.ServiceUnavailable("the generation was cancelled before it started")
        except errors.ModelportError as exc:
            self._forget(gid, gen)
            return _error(exc)
        except BaseException:
            self._forget(gid, gen)
            raise
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        cancel = gen.cancel

        def push(item: tuple[Any, ...]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        self.active_generations += 1
        self._cancels.add(cancel)
        producer = self._run_locked(lambda: self._produce(body, gen, push), self.generation_slots,
                                    self._generate_threads)
        gen.producer = producer

        def finished(_: Any) -> None:
            self.active_generations -= 1
            self._cancels.discard(cancel)
            self._forget(gid, gen)

        producer.add_done_callback(finished)
        try:
            first = await events.get()
            if first[0] == "error":  # refused before any output: a plain HTTP error
                return _error(first[1])
            response = _EventStream(headers=_NDJSON)
            await response.prepare(request)
            with contextlib.suppress(ConnectionError):  # the client went away: stop the runtime
                await self._stream(response, first, events, body.n)
            return response
        finally:
            cancel.set()  # also on CancelledError: aiohttp cancels the handler on disconnect

    async def cancel(self, request: web.Request) -> web.Response:
        """Stop a generation by its id and answer what it generated, once it has stopped."""
        try:
            body: CancelBody = await _parse(request, CancelBody)
            gen = self._generations.get(body.id)
            if gen is None:
                total = self._ended.get(body.id)
                if total is None:
                    raise errors.NotFound("no generation with this id is running or ended recently", field="id")
                return _json({"completion_tokens": total})
            gen.cancel.set()
            if gen.producer is not None:  # admitted: wait for its model thread to stop
                await asyncio.wait({gen.producer}, timeout=CANCEL_WAIT_SECONDS)
                if not gen.producer.done():
                    raise errors.ServiceUnavailable("the generation has not stopped yet; ask again")
        except errors.ModelportError as exc:
            return _error(exc)
        return _json({"completion_tokens": gen.total})

    async def _stream(self, response: web.StreamResponse, item: tuple[Any, ...],
                      events: asyncio.Queue[tuple[Any, ...]], n: int) -> None:
        prompt_tokens = 0
        completion_tokens = 0
        finished = 0
        while True:
            chunk: list[bytes] = []
            done = False
            while True:  # batch whatever the model thread has produced since the last write
                kind = item[0]
                if kind == "delta":
                    index, delta = item[1], item[2]
                    if delta.text or delta.logprobs is not None:
                        event = {"type": "delta", "index": index, "text": delta.text}
                        if delta.logprobs is not None:
                            event["logprobs"] = logprobs_wire(delta.logprobs)
                        if delta.generated is not None:
                            event["generated"] = delta.generated
                        chunk.append(encode_event(event))
                    if delta.finish_reason is not None:
                        usage = delta.usage
                        prompt_tokens = usage.prompt_tokens
                        completion_tokens += usage.completion_tokens
                        finished += 1
                        chunk.append(encode_event({"type": "finish", "index": index,
                                                   "finish_reason": delta.finish_reason,
                                                   "completion_tokens": usage.completion_tokens}))
                elif kind == "end":
                    if finished < n:  # cancelled by a shutdown (a disconnect has nobody to tell)
                        error = errors.ServiceUnavailable(_SHUTDOWN_MESSAGE)
                        chunk.append(encode_event({"type": "error", **error_body(error)["error"]}))
                    else:
                        chunk.append(encode_event({"type": "usage", "prompt_tokens": prompt_tokens,
                                                   "completion_tokens": completion_tokens}))
                    done = True
                    break
                else:  # error
                    chunk.append(encode_event({"type": "error", **error_body(item[1])["error"]}))
                    done = True
                    break
                if events.empty():
                    break
                item = events.get_nowait()
            if done:  # the last events and the end of the body in one write (one wakeup for the gateway)
                await response.write_eof(b"".join(chunk))
                return
            if chunk:
                await response.write(b"".join(chunk))
            item = await events.get()

    # -- shutdown ---------------------------------------------------------------------------

    async def drain(self) -> None:
        """Stop admitting, wait up to drain_seconds for in-flight work, then cancel the rest."""
        self.draining = True
        deadline = time.monotonic() + self.spec.drain_seconds
        while (self.active_generations or self.queued) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.shutting_down = True
        for cancel in list(self._cancels):
            cancel.set()
        # Let handlers write their closing error events before the server goes away.
        for _ in range(100):
            if not self.active_generations:
                break
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self._generate_threads.shutdown(wait=True, cancel_futures=True)
        self._model_thread.shutdown(wait=True, cancel_futures=True)
        self._tokenize_thread.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.runtime.close()


class EmbedBatcher:
    """Concurrent embeddings requests share one call of the runtime.

    The first request runs at once; requests that arrive while a batch runs wait together and
    form the next batch (up to `max_texts` texts, whole requests only). A batch that the runtime
    refuses as a whole (one input too long, say) is run again request by request, so that each
    request gets its own answer and no request fails for another's input.
    """

    def __init__(self, server: WorkerServer, max_texts: int = 256) -> None:
        self._server = server
        self._max_texts = max_texts
        self._pending: list[tuple[list[str], asyncio.Future[tuple[list[list[float]], int]]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.requests = 0

    def counters(self) -> dict[str, int]:
        return {"embed_batches": self.batches, "embed_requests": self.requests} if self.requests else {}

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        future: asyncio.Future[tuple[list[list[float]], int]] = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        if not self._running:
            self._running = True
            self._task = asyncio.get_running_loop().create_task(self._drain())  # held: the loop keeps weak refs
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch: list[tuple[list[str], asyncio.Future[tuple[list[list[float]], int]]]] = []
                count = 0
                while self._pending and (not batch or count + len(self._pending[0][0]) <= self._max_texts):
                    texts, future = self._pending.pop(0)
                    batch.append((texts, future))
                    count += len(texts)
                await self._run(batch)
        finally:
            self._running = False

    async def _run(self, batch: list[tuple[list[str], asyncio.Future[tuple[list[list[float]], int]]]]) -> None:
        server = self._server
        runtime = server.runtime
        loop = asyncio.get_running_loop()

        def call(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
            return loop.run_in_executor(server._model_thread, fn, *args)

        async def answer(pairs: list[tuple[list[str], asyncio.Future[Any]]], attempt: Callable[[], Any]) -> bool:
            try:
                await attempt()
            except errors.ModelportError as exc:
                if len(pairs) > 1 and isinstance(exc, errors.InvalidInput):
                    return False  # one request's input: answer them one by one
                for _, future in pairs:
                    future.set_exception(exc)
            except Exception as exc:  # a runtime bug: say what kind, never the message (may hold data)
                error = errors.InternalError(f"the model runtime failed ({type(exc).__name__})")
                for _, future in pairs:
                    future.set_exception(error)
            return True

        async def together() -> None:
            texts = [t for request, _ in batch for t in request]
            result = await call(runtime.embed, texts)
            counts = result.token_counts
            if counts is None:
                counts = await call(runtime.count_input_tokens, texts) if len(batch) > 1 else [result.prompt_tokens]
            self.batches += 1
            at = 0
            for request, future in batch:
                n = len(request)
                tokens = result.prompt_tokens if len(batch) == 1 else sum(counts[at:at + n])
                future.set_result((result.vectors[at:at + n], tokens))
                at += n
                self.requests += 1

        def alone(request: list[str], future: asyncio.Future[Any]) -> Callable[[], Any]:
            async def run() -> None:
                result = await call(runtime.embed, request)
                self.batches += 1
                self.requests += 1
                future.set_result((result.vectors, result.prompt_tokens))
            return run

        await server.model_lock.acquire()
        try:
            if not await answer(batch, together):
                for request, future in batch:
                    await answer([(request, future)], alone(request, future))
        finally:
            server.model_lock.release()
