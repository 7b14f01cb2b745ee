"""The answers of chat and text completions, built from the answer pipeline's events: whole
(`chat_completion`, `text_completion`, from the choices `ChoiceOut` gathered) or streamed as
server-sent events (`ChatChunks`, `CompletionChunks`, one chunk per event). The shapes are the
typed answers of protocol.py (TypedDicts); what they carry is decided in handlers.py and answers.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelport.inference import filtering, tools
from modelport.inference.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    CompletionChoice,
    CompletionChunk,
    CompletionChunkChoice,
    FunctionCallOut,
    FunctionDelta,
    TextCompletion,
    ToolCallDelta,
    ToolCallOut,
    Usage,
    completion_logprobs,
    usage_of,
)
from modelport.workers.client import StreamUsage

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


def sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


#: Stands for a piece's text while a text chunk's template is rendered (no answer holds it: it is
#: replaced before anything is sent, and the id and model name around it are plain names).
_MARK = "\x00piece\x00"


class TextTemplate:
    """The bytes of a chunk that carries only a piece of text, rendered once per stream and choice
    from the typed chunk itself (with `_MARK` as the text), then filled per piece: the typed
    shape decides, and a streamed token costs an orjson string instead of building and dumping the
    chunk (benchmarks/bench_wire_shapes.py)."""

    def __init__(self, rendered: bytes) -> None:
        self.head, mark, self.tail = rendered.partition(orjson.dumps(_MARK))
        if not mark or orjson.dumps(_MARK) in self.tail:
            raise ValueError("a text chunk's template must hold its text once")

    def fill(self, text: str) -> bytes:
        return self.head + orjson.dumps(text) + self.tail


@dataclass
class ChoiceOut:
    """One choice of a non-streamed answer, assembled from the pipeline's events."""

    text: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    calls: list[ToolCallOut] = field(default_factory=list)
    finish_reason: str | None = None

    def take(self, piece: tools.Piece) -> None:
        if isinstance(piece, tools.Content):
            self.text.append(piece.text)
            self.logprobs += piece.logprobs or []
        elif isinstance(piece, tools.CallStart):
            self.calls.append(ToolCallOut(id=piece.id, type="function",
                                          function=FunctionCallOut(name=piece.name, arguments="")))
        else:
            self.calls[piece.index]["function"]["arguments"] += piece.text


# -- whole answers ---------------------------------------------------------------------------------

def chat_completion(rid: str, created: int, model: str, choices: list[ChoiceOut], usage: StreamUsage,
                    flt: filtering.RequestFilter | None, *, logprobs: bool) -> ChatCompletion:
    # dict displays checked against the TypedDicts by mypy: half the cost of calling the classes
    out = []
    for i, c in enumerate(choices):
        text = "".join(c.text)
        message: AssistantMessage = {"role": "assistant", "content": text if text or not c.calls else None}
        if c.calls:
            message["tool_calls"] = c.calls
        choice: ChatChoice = {"index": i, "message": message, "finish_reason": c.finish_reason,
                              "logprobs": {"content": c.logprobs, "refusal": None} if logprobs else None}
        if flt is not None:
            choice["content_filter_results"] = flt.results(i)
        out.append(choice)
    body: ChatCompletion = {"id": rid, "object": "chat.completion", "created": created, "model": model,
                            "choices": out, "usage": usage_of(usage.prompt_tokens, usage.completion_tokens)}
    if flt is not None:
        body["prompt_filter_results"] = flt.prompt_filter_results()
    return body


def text_completion(rid: str, created: int, model: str, choices: list[ChoiceOut], usage: StreamUsage,
                    flt: filtering.RequestFilter | None, *, logprobs: bool) -> TextCompletion:
    out = []
    for i, c in enumerate(choices):
        choice: CompletionChoice = {"index": i, "text": "".join(c.text), "finish_reason": c.finish_reason,
                                    "logprobs": completion_logprobs(c.logprobs, 0) if logprobs else None}
        if flt is not None:
            choice["content_filter_results"] = flt.results(i)
        out.append(choice)
    body: TextCompletion = {"id": rid, "object": "text_completion", "created": created, "model": model,
                            "choices": out, "usage": usage_of(usage.prompt_tokens, usage.completion_tokens)}
    if flt is not None:
        body["prompt_filter_results"] = flt.prompt_filter_results()
    return body


# -- streamed answers ------------------------------------------------------------------------------

class ChatChunks:
    """The chunks of one streamed chat answer: each choice opens with the assistant's role (the
    first with the prompt's filter results), then its pieces, then its finish."""

    def __init__(self, rid: str, created: int, model: str, flt: filtering.RequestFilter | None, *,
                 include_usage: bool, logprobs: bool) -> None:
        self.rid, self.created, self.model, self.flt = rid, created, model, flt
        self.include_usage, self.logprobs = include_usage, logprobs
        self._text: dict[int, TextTemplate] = {}  # per choice: a content delta without logprobs

    def _chunk(self, choices: list[ChatChunkChoice], *, usage: Usage | None = None, first: bool = False) -> bytes:
        chunk = ChatCompletionChunk(id=self.rid, object="chat.completion.chunk", created=self.created,
                                    model=self.model, choices=choices)
        if self.include_usage:
            chunk["usage"] = usage
        if first and self.flt is not None:
            chunk["prompt_filter_results"] = self.flt.prompt_filter_results()
        return sse(chunk)

    def opening(self, n: int) -> list[bytes]:
        return [self._chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""), logprobs=None,
                                             finish_reason=None)], first=i == 0) for i in range(n)]

    def piece(self, index: int, piece: tools.Piece) -> bytes:
        if isinstance(piece, tools.Content) and not self.logprobs:
            template = self._text.get(index)
            if template is None:
                template = self._text[index] = TextTemplate(self._chunk([ChatChunkChoice(
                    index=index, delta=ChatDelta(content=_MARK), logprobs=None, finish_reason=None)]))
            return template.fill(piece.text)
        logprobs = None
        if isinstance(piece, tools.Content):
            delta = ChatDelta(content=piece.text)
            if self.logprobs:
                logprobs = ChatLogprobs(content=piece.logprobs or [], refusal=None)
        elif isinstance(piece, tools.CallStart):
            delta = ChatDelta(tool_calls=[ToolCallDelta(index=piece.index, id=piece.id, type="function",
                                                        function=FunctionDelta(name=piece.name, arguments=""))])
        else:
            delta = ChatDelta(tool_calls=[ToolCallDelta(index=piece.index,
                                                        function=FunctionDelta(arguments=piece.text))])
        return self._chunk([ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=None)])

    def finish(self, index: int, reason: str) -> bytes:
        choice = ChatChunkChoice(index=index, delta=ChatDelta(), logprobs=None, finish_reason=reason)
        if self.flt is not None:
            choice["content_filter_results"] = self.flt.results(index)
        return self._chunk([choice])

    def usage(self, usage: StreamUsage) -> bytes:
        return self._chunk([], usage=usage_of(usage.prompt_tokens, usage.completion_tokens))


class CompletionChunks:
    """The chunks of one streamed text completion: pieces (logprobs with their offsets in the
    choice's text), then each choice's finish."""

    def __init__(self, rid: str, created: int, model: str, flt: filtering.RequestFilter | None, *,
                 include_usage: bool, logprobs: bool) -> None:
        self.rid, self.created, self.model, self.flt = rid, created, model, flt
        self.include_usage, self.logprobs = include_usage, logprobs
        self.offsets: dict[int, int] = {}  # per choice: characters of text sent so far
        self._text: dict[int, TextTemplate] = {}  # per choice: a piece without logprobs

    def _chunk(self, choices: list[CompletionChunkChoice], *, usage: Usage | None = None) -> bytes:
        chunk = CompletionChunk(id=self.rid, object="text_completion", created=self.created, model=self.model,
                                choices=choices)
        if self.include_usage:
            chunk["usage"] = usage
        return sse(chunk)

    def opening(self, n: int) -> list[bytes]:
        return []

    def piece(self, index: int, piece: tools.Piece) -> bytes:
        assert isinstance(piece, tools.Content)  # a completion reads no tool calls
        if not self.logprobs:
            template = self._text.get(index)
            if template is None:
                template = self._text[index] = TextTemplate(self._chunk([CompletionChunkChoice(
                    index=index, text=_MARK, logprobs=None, finish_reason=None)]))
            return template.fill(piece.text)
        offset = self.offsets.get(index, 0)
        logprobs = completion_logprobs(piece.logprobs or [], offset) if self.logprobs else None
        self.offsets[index] = offset + len(piece.text)
        return self._chunk([CompletionChunkChoice(index=index, text=piece.text, logprobs=logprobs,
                                                  finish_reason=None)])

    def finish(self, index: int, reason: str) -> bytes:
        choice = CompletionChunkChoice(index=index, text="", logprobs=None, finish_reason=reason)
        if self.flt is not None:
            choice["content_filter_results"] = self.flt.results(index)
        return self._chunk([choice])

    def usage(self, usage: StreamUsage) -> bytes:
        return self._chunk([], usage=usage_of(usage.prompt_tokens, usage.completion_tokens))
