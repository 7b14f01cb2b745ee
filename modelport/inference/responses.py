"""`POST /v1/responses`: OpenAI's Responses API, for what maps onto one stateless chat.

The input (a text, or messages and `function_call` / `function_call_output` items), the
`instructions`, function tools, `tool_choice` and `text.format` become a chat request that runs
through the same pipeline as `/v1/chat/completions` (content filter, metering, quotas, network
rules, grammars). modelport never stores a response (P1): `store` defaults to false, `store:
true` and `previous_response_id` answer 400, and `GET /v1/responses/{id}` answers 404.
As in OpenAI's API, a function tool is `strict` unless it says `"strict": false`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from modelport.api.responses import ClosingStreamingResponse
from modelport.errors import InvalidInput, ModelportError, NotFound
from modelport.inference import admission, answers, calls, filtering, tools
from modelport.inference.handlers import (
    CLIENT_CLOSED_REQUEST,
    Call,
    ChoiceOut,
    ClientGone,
    ErrorShape,
    chat_plan,
    check_task,
    parse,
    unless_gone,
    worker_messages,
)
from modelport.inference.manager import DeploymentManager, Route
from modelport.inference.protocol import ChatCompletionRequest, ResponsesRequest
from modelport.offload import run_blocking
from modelport.quotas import estimate
from modelport.workers.client import StreamUsage
from modelport.workers.protocol import GenerateBody

NOT_STORED = ("modelport never stores responses (prompts and outputs stay in memory only), so there is no "
              "response to {what}. Send the whole conversation in 'input' instead.")


def not_found(response_id: str) -> NotFound:
    return NotFound(NOT_STORED.format(what="retrieve"), details={"openai_code": "not_found"})


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text") \
                    or not isinstance(part.get("text"), str):
                raise InvalidInput(f"{where}[{i}]: only text content parts (input_text, output_text) are supported.",
                                   field=f"{where}[{i}]")
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidInput(f"{where} must be a text or a list of text parts.", field=where)


def chat_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The Responses input as chat messages (validated by the chat request model afterwards)."""
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        return [*messages, {"role": "user", "content": req.input}]
    for i, item in enumerate(req.input):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be an object.", field=where)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role"), "content": _text(item.get("content"), where + ".content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") and not last["content"]:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": _text(output, where + ".output")})
        else:
            raise InvalidInput(f"{where}: only message, function_call and function_call_output items are "
                               "supported.", field=where + ".type")
    return messages


def chat_tools(raw: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses function tools (flat) as chat tools; strict unless `"strict": false`."""
    if raw is None:
        return None
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or t.get("type") != "function":
            raise InvalidInput(f"tools[{i}]: only function tools are supported here.", field=f"tools[{i}].type")
        fn = {k: v for k, v in t.items() if k != "type"}
        fn["strict"] = fn.get("strict", True) is not False
        out.append({"type": "function", "function": fn})
    return out


def chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    if req.store:
        raise InvalidInput(NOT_STORED.format(what="store") + " Set 'store' to false or leave it out.", field="store")
    if req.previous_response_id is not None:
        raise InvalidInput(NOT_STORED.format(what="continue from"), field="previous_response_id")
    if req.include:
        raise InvalidInput("'include' is not supported; leave it out.", field="include")
    fmt = (req.text or {}).get("format")
    response_format = None
    if fmt is not None:
        if not isinstance(fmt, dict):
            raise InvalidInput("text.format must be an object.", field="text.format")
        if fmt.get("type") == "json_schema":
            spec = {k: v for k, v in fmt.items() if k != "type"}
            response_format = {"type": "json_schema", "json_schema": spec}
        else:
            response_format = fmt
    body: dict[str, Any] = {
        "messages": chat_messages(req), "max_tokens": req.max_output_tokens, "temperature": req.temperature,
        "top_p": req.top_p, "tools": chat_tools(req.tools), "parallel_tool_calls": req.parallel_tool_calls,
        "tool_choice": req.tool_choice, "response_format": response_format}
    try:
        chat: ChatCompletionRequest = parse(ChatCompletionRequest, {k: v for k, v in body.items() if v is not None})
    except InvalidInput as exc:  # name the Responses fields, not the chat request's
        field = (exc.field or "").replace("messages", "input").replace("response_format", "text.format")
        raise InvalidInput(exc.message.replace("messages", "input").replace("response_format", "text.format"),
                           field=field or None) from exc
    return chat


def _usage(u: StreamUsage) -> dict[str, Any]:
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens}


INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


async def create(request: Request, manager: DeploymentManager, route: Route, body: dict, *,
                 error_shape: ErrorShape) -> Response:
    req: ResponsesRequest = parse(ResponsesRequest, body)
    check_task(route, "chat-completion")
    chat = chat_request(req)
    found = await run_blocking(chat_plan, chat)  # a schema's grammar is built off the event loop
    messages = worker_messages(chat.messages)
    gen = GenerateBody(messages=messages, max_tokens=chat.max_tokens,
                       temperature=1.0 if chat.temperature is None else chat.temperature,
                       top_p=1.0 if chat.top_p is None else chat.top_p,
                       response_format=found.response_format,  # type: ignore[arg-type]
                       grammar=found.grammar, tools=found.tools)
    await admission.admit(request, route, estimate.prompt_tokens([filtering.prompt_text(messages, found.tools)],
                                                                 len(messages))
                          + estimate.completion_tokens(gen.max_tokens, gen.n))
    call = Call(request, manager, route, gen, "responses", error_shape,
                filtering.prompt_text(messages, found.tools),
                calls.PromptSize(manager, route, messages=messages, tools=found.tools),
                reads_calls=found.calls, logprobs=False)
    shell = {
        "id": "resp_" + secrets.token_hex(16), "object": "response", "created_at": int(time.time()),
        "status": "in_progress", "error": None, "incomplete_details": None, "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens, "model": route.name, "output": [],
        "parallel_tool_calls": req.parallel_tool_calls, "previous_response_id": None, "store": False,
        "temperature": req.temperature, "top_p": req.top_p,
        "text": req.text or {"format": {"type": "text"}},
        "tool_choice": req.tool_choice if req.tool_choice is not None else ("auto" if req.tools else "none"),
        "tools": [{**t, "strict": t.get("strict", True) is not False} for t in req.tools or []],
        "truncation": "disabled", "metadata": req.metadata or {}, "usage": None,
    }
    if not req.stream:
        got = await call.collect()
        if isinstance(got, Response):
            return got
        (choice,), usage, flt = got
        out = {**shell, "output": _items(choice), "usage": _usage(usage), **_status(choice.finish_reason)}
        if flt is not None:
            out["prompt_filter_results"] = flt.prompt_filter_results()
            out["content_filter_results"] = flt.results(0)
        # committed before the answer leaves (group commit): an answer that was sent is billed
        await call.bill.commit(usage.prompt_tokens, usage.completion_tokens,
                               "filtered" if choice.finish_reason == "content_filter" else "success")
        return Response(orjson.dumps(out), media_type="application/json")
    return await _stream(call, shell)


def _status(finish: str | None) -> dict[str, Any]:
    reason = INCOMPLETE.get(finish or "")
    if reason is None:
        return {"status": "completed", "completed_at": int(time.time())}
    return {"status": "incomplete", "incomplete_details": {"reason": reason}}


def _message(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if text or
            status == "completed" else []}


def _function_call(item_id: str, call: dict[str, Any], status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call["id"], "name": call["function"]["name"],
            "arguments": call["function"]["arguments"], "status": status}


def _items(choice: ChoiceOut) -> list[dict[str, Any]]:
    items = []
    text = "".join(choice.text)
    status = "completed" if choice.finish_reason in ("stop", "tool_calls") else "incomplete"
    if text or not choice.calls:
        items.append(_message("msg_" + secrets.token_hex(16), text, status))
    items += [_function_call("fc_" + secrets.token_hex(16), c, status) for c in choice.calls]
    return items


async def _stream(call: Call, shell: dict[str, Any]) -> Response:
    pipeline, events = await call.start(buffered=None)
    flt = pipeline.flt
    run = pipeline.run(events)

    async def close() -> None:
        await run.aclose()
        await events.aclose()
        if flt is not None:
            await flt.close()

    try:
        first = await unless_gone(call.request, anext(run, None))
    except ClientGone:
        await close()
        call.bill.cut(pipeline.deltas, None, "cancelled")
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except BaseException as exc:
        await close()
        call.bill.cut(pipeline.deltas, None, "error", exc)
        raise
    seq = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal seq
        seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, "sequence_number": seq - 1,
                                                                          **fields}) + b"\n\n"

    async def stream() -> AsyncIterator[bytes]:
        usage: StreamUsage | None = None
        output: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None  # the open item: a message or a function call

        def close_item() -> list[bytes]:
            nonlocal current
            if current is None:
                return []
            index = len(output) - 1
            done = []
            if current["type"] == "message":
                part = current["content"][0]
                done += [event("response.output_text.done", item_id=current["id"], output_index=index,
                               content_index=0, text=part["text"], logprobs=[]),
                         event("response.content_part.done", item_id=current["id"], output_index=index,
                               content_index=0, part=part)]
            else:
                done.append(event("response.function_call_arguments.done", item_id=current["id"],
                                  output_index=index, arguments=current["arguments"]))
            current["status"] = "completed"
            done.append(event("response.output_item.done", output_index=index, item=current))
            current = None
            return done

        try:
            yield event("response.created", response=shell)
            yield event("response.in_progress", response=shell)
            ev = first
            finish = "stop"
            while ev is not None:
                if isinstance(ev, answers.Part):
                    piece = ev.piece
                    if isinstance(piece, tools.Content):
                        if current is None or current["type"] != "message":
                            for b in close_item():
                                yield b
                            current = _message("msg_" + secrets.token_hex(16), "", "in_progress")
                            current["content"] = []
                            output.append(current)
                            yield event("response.output_item.added", output_index=len(output) - 1, item=current)
                            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                            current["content"].append(part)
                            yield event("response.content_part.added", item_id=current["id"],
                                        output_index=len(output) - 1, content_index=0, part=part)
                        current["content"][0]["text"] += piece.text
                        yield event("response.output_text.delta", item_id=current["id"], output_index=len(output) - 1,
                                    content_index=0, delta=piece.text, logprobs=[])
                    elif isinstance(piece, tools.CallStart):
                        for b in close_item():
                            yield b
                        current = _function_call("fc_" + secrets.token_hex(16), {
                            "id": piece.id, "function": {"name": piece.name, "arguments": ""}}, "in_progress")
                        output.append(current)
                        yield event("response.output_item.added", output_index=len(output) - 1, item=current)
                    else:
                        assert current is not None
                        current["arguments"] += piece.text
                        yield event("response.function_call_arguments.delta", item_id=current["id"],
                                    output_index=len(output) - 1, delta=piece.text)
                elif isinstance(ev, answers.Finished):
                    finish = ev.reason
                else:
                    usage = ev
                ev = await anext(run, None)
            for b in close_item():
                yield b
            status = _status(finish)
            usage = await call.bill.final_usage(usage, pipeline.deltas)
            final = {**shell, "output": output, "usage": _usage(usage), **status}
            if flt is not None:
                final["content_filter_results"] = flt.results(0)
            kind = "response.completed" if status["status"] == "completed" else "response.incomplete"
            # committed before the last event leaves: a stream whose end was sent is billed
            await call.bill.commit(usage.prompt_tokens, usage.completion_tokens,
                                   "filtered" if finish == "content_filter" else "success")
            yield event(kind, response=final)
        except ModelportError as exc:
            call.bill.cut(pipeline.deltas, usage, "error", exc)
            err = orjson.loads(call.error_shape(exc).body)["error"]
            yield event("error", code=err.get("code"), message=err.get("message"), param=err.get("param"))
        finally:
            await close()
            call.bill.cut(pipeline.deltas, usage, "cancelled")  # nothing if billed above

    return ClosingStreamingResponse(stream(), media_type="text/event-stream",
                                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
