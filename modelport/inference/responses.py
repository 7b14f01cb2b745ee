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
from modelport.inference import answers, tools
from modelport.inference.builders import STREAM_HEADERS, ChoiceOut
from modelport.inference.gateway import Gateway
from modelport.inference.handlers import (
    Call,
    Running,
    chat_call,
    check_task,
    parse,
)
from modelport.inference.protocol import (
    ChatCompletionRequest,
    FunctionCallItem,
    OutputMessage,
    OutputText,
    ResponseObject,
    ResponsesRequest,
    ToolCallOut,
    response_usage_of,
)
from modelport.inference.routing import Route
from modelport.inference.wire_errors import ErrorShape
from modelport.workers.client import StreamUsage

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


INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


async def create(request: Request, gateway: Gateway, route: Route, body: dict, *,
                 error_shape: ErrorShape) -> Response:
    req: ResponsesRequest = parse(ResponsesRequest, body)
    check_task(route, "chat-completion")
    call = await chat_call(request, gateway, route, chat_request(req), "responses", error_shape)
    shell = in_progress(req, route.name)
    if req.stream:
        return await _stream(call, shell)
    return await _answer(call, shell)


def in_progress(req: ResponsesRequest, model: str) -> ResponseObject:
    """The response as it stands before any output (the stream's first events carry it)."""
    return ResponseObject(
        id="resp_" + secrets.token_hex(16), object="response", created_at=int(time.time()), status="in_progress",
        error=None, incomplete_details=None, instructions=req.instructions, max_output_tokens=req.max_output_tokens,
        model=model, output=[], parallel_tool_calls=req.parallel_tool_calls, previous_response_id=None, store=False,
        temperature=req.temperature, top_p=req.top_p, text=req.text or {"format": {"type": "text"}},
        tool_choice=req.tool_choice if req.tool_choice is not None else ("auto" if req.tools else "none"),
        tools=[{**t, "strict": t.get("strict", True) is not False} for t in req.tools or []],
        truncation="disabled", metadata=req.metadata or {}, usage=None)


def finished(shell: ResponseObject, output: list[OutputMessage | FunctionCallItem], usage: StreamUsage,
             finish: str | None) -> ResponseObject:
    """The response once its output is complete: `finish` is the choice's finish reason."""
    done = shell.copy()
    done["output"] = output
    done["usage"] = response_usage_of(usage.prompt_tokens, usage.completion_tokens)
    reason = INCOMPLETE.get(finish or "")
    if reason is None:
        done["status"] = "completed"
        done["completed_at"] = int(time.time())
    else:
        done["status"] = "incomplete"
        done["incomplete_details"] = {"reason": reason}
    return done


async def _answer(call: Call, shell: ResponseObject) -> Response:
    got = await call.collect()
    if isinstance(got, Response):
        return got
    (choice,), usage, flt = got
    out = finished(shell, _items(choice), usage, choice.finish_reason)
    if flt is not None:
        out["prompt_filter_results"] = flt.prompt_filter_results()
        out["content_filter_results"] = flt.results(0)
    # committed before the answer leaves (group commit): an answer that was sent is billed
    await call.bill.commit(usage.prompt_tokens, usage.completion_tokens,
                           "filtered" if choice.finish_reason == "content_filter" else "success")
    return Response(orjson.dumps(out), media_type="application/json")


def _message(item_id: str, text: str, status: str) -> OutputMessage:
    content = [OutputText(type="output_text", text=text, annotations=[], logprobs=[])] if text or \
        status == "completed" else []
    return OutputMessage(type="message", id=item_id, status=status, role="assistant", content=content)


def _function_call(item_id: str, call: ToolCallOut, status: str) -> FunctionCallItem:
    return FunctionCallItem(type="function_call", id=item_id, call_id=call["id"], name=call["function"]["name"],
                            arguments=call["function"]["arguments"], status=status)


def _items(choice: ChoiceOut) -> list[OutputMessage | FunctionCallItem]:
    items: list[OutputMessage | FunctionCallItem] = []
    text = "".join(choice.text)
    status = "completed" if choice.finish_reason in ("stop", "tool_calls") else "incomplete"
    if text or not choice.calls:
        items.append(_message("msg_" + secrets.token_hex(16), text, status))
    items += [_function_call("fc_" + secrets.token_hex(16), c, status) for c in choice.calls]
    return items


async def _stream(call: Call, shell: ResponseObject) -> Response:
    running = await call.start(buffered=None)
    first = await call.first_event(running)
    if isinstance(first, Response):
        return first
    return ClosingStreamingResponse(ResponseEvents(call, shell).stream(running, first),
                                    media_type="text/event-stream", headers=STREAM_HEADERS)


class ResponseEvents:
    """The server-sent events of one streamed response: created and in-progress, then per output
    item (a message, or a function call) added, its deltas, done; then completed or incomplete."""

    def __init__(self, call: Call, shell: ResponseObject) -> None:
        self.call, self.shell = call, shell
        self.seq = 0
        self.output: list[OutputMessage | FunctionCallItem] = []
        self.current: OutputMessage | FunctionCallItem | None = None  # the open item

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    @property
    def index(self) -> int:
        return len(self.output) - 1

    def open(self, item: OutputMessage | FunctionCallItem) -> list[bytes]:
        out = self.close_item()
        self.current = item
        self.output.append(item)
        out.append(self.event("response.output_item.added", output_index=self.index, item=item))
        if item["type"] == "message":
            part = OutputText(type="output_text", text="", annotations=[], logprobs=[])
            item["content"].append(part)
            out.append(self.event("response.content_part.added", item_id=item["id"], output_index=self.index,
                                  content_index=0, part=part))
        return out

    def close_item(self) -> list[bytes]:
        item = self.current
        if item is None:
            return []
        done = []
        if item["type"] == "message":
            part = item["content"][0]
            done += [self.event("response.output_text.done", item_id=item["id"], output_index=self.index,
                                content_index=0, text=part["text"], logprobs=[]),
                     self.event("response.content_part.done", item_id=item["id"], output_index=self.index,
                                content_index=0, part=part)]
        else:
            done.append(self.event("response.function_call_arguments.done", item_id=item["id"],
                                   output_index=self.index, arguments=item["arguments"]))
        item["status"] = "completed"
        done.append(self.event("response.output_item.done", output_index=self.index, item=item))
        self.current = None
        return done

    def piece(self, piece: tools.Piece) -> list[bytes]:
        out: list[bytes] = []
        if isinstance(piece, tools.Content):
            if self.current is None or self.current["type"] != "message":
                out += self.open(_message("msg_" + secrets.token_hex(16), "", "in_progress"))
            message = self.current
            assert message is not None and message["type"] == "message"
            message["content"][0]["text"] += piece.text
            out.append(self.event("response.output_text.delta", item_id=message["id"], output_index=self.index,
                                  content_index=0, delta=piece.text, logprobs=[]))
        elif isinstance(piece, tools.CallStart):
            out += self.open(FunctionCallItem(type="function_call", id="fc_" + secrets.token_hex(16),
                                              call_id=piece.id, name=piece.name, arguments="", status="in_progress"))
        else:
            call = self.current
            assert call is not None and call["type"] == "function_call"
            call["arguments"] += piece.text
            out.append(self.event("response.function_call_arguments.delta", item_id=call["id"],
                                  output_index=self.index, delta=piece.text))
        return out

    async def stream(self, running: Running, first: answers.Event | None) -> AsyncIterator[bytes]:
        call, pipeline, flt = self.call, running.pipeline, running.pipeline.flt
        usage: StreamUsage | None = None
        try:
            yield self.event("response.created", response=self.shell)
            yield self.event("response.in_progress", response=self.shell)
            ev = first
            finish = "stop"
            while ev is not None:
                if isinstance(ev, answers.Part):
                    for b in self.piece(ev.piece):
                        yield b
                elif isinstance(ev, answers.Finished):
                    finish = ev.reason
                else:
                    usage = ev
                ev = await anext(running.run, None)
            for b in self.close_item():
                yield b
            usage = await call.bill.final_usage(usage, pipeline.reported)
            final = finished(self.shell, self.output, usage, finish)
            if flt is not None:
                final["content_filter_results"] = flt.results(0)
            kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
            # committed before the last event leaves: a stream whose end was sent is billed
            await call.bill.commit(usage.prompt_tokens, usage.completion_tokens,
                                   "filtered" if finish == "content_filter" else "success")
            yield self.event(kind, response=final)
        except ModelportError as exc:
            call.bill.cut(pipeline.reported, usage, "error", exc)
            err = call.error_shape.body(exc)["error"]
            yield self.event("error", code=err.get("code"), message=err.get("message"), param=err.get("param"))
        finally:
            await running.close()
            call.bill.cut(pipeline.reported, usage, "cancelled")  # nothing if billed above
