"""From the worker's events to what a client may see: the content filter's verdicts, tool calls
read out of the answer, and logprobs kept with the text they belong to.

One pipeline for every generating API (chat, completions, Responses), streamed or not; each API
only shapes its events. Per choice, in order:

    worker delta --> content filter (StreamScreener: releases text once screened)
                 --> logprobs aligned with the released text (a delta's tokens leave with the
                     last character of that delta's text)
                 --> AnswerReader (content, or tool-call starts and argument pieces)

So what is screened is exactly the model's text (a tool call's arguments included), nothing is
released before the filter passed it in buffered mode, and a filtered segment's logprobs never
leave either.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from modelport.inference.filtering import RequestFilter
from modelport.inference.tools import AnswerReader, Piece
from modelport.workers.client import ChoiceFinished, GenerateEvent, StreamUsage, TextDelta


@dataclass(frozen=True)
class Part:
    index: int
    piece: Piece


@dataclass(frozen=True)
class Finished:
    index: int
    reason: str  # stop | length | tool_calls | content_filter


Event = Part | Finished | StreamUsage


class _Aligned:
    """Logprobs waiting for the filter to release the text of their delta."""

    def __init__(self) -> None:
        self._queue: list[tuple[int, list[dict[str, Any]]]] = []  # (end offset of the delta's text, its tokens)
        self._fed = 0
        self._released = 0

    def push(self, text: str, logprobs: list[dict[str, Any]] | None) -> None:
        self._fed += len(text)
        if logprobs:
            self._queue.append((self._fed, logprobs))

    def take(self, released: int, *, everything: bool = False) -> list[dict[str, Any]]:
        self._released += released
        out: list[dict[str, Any]] = []
        while self._queue and (everything or self._queue[0][0] <= self._released):
            out += self._queue.pop(0)[1]
        return out


@dataclass
class _Choice:
    reader: AnswerReader
    aligned: _Aligned = field(default_factory=_Aligned)
    done: bool = False


class Answers:
    """Runs the pipeline over one request's worker events; `reported` is the completion tokens
    the worker reported in the deltas read so far (each delta's `generated` count, or one a
    delta from a runtime that does not count): what a stream cut before the usage event is
    billed when its worker cannot say more (it crashed)."""

    def __init__(self, flt: RequestFilter | None, n: int, *, calls: bool, logprobs: bool, buffered: bool | None):
        self.flt = flt
        self.logprobs = logprobs
        self.choices = [_Choice(AnswerReader(calls)) for _ in range(n)]
        self._reported = [0] * n
        if flt is not None:
            for i in range(n):
                flt.stream(i, buffered=buffered)

    @property
    def reported(self) -> int:
        return sum(self._reported)

    def _parts(self, index: int, text: str, logprobs: list[dict[str, Any]] | None) -> list[Event]:
        lps = logprobs if self.logprobs else None
        return [Part(index, p) for p in self.choices[index].reader.feed(text, lps)]

    async def run(self, events: AsyncIterator[GenerateEvent]) -> AsyncGenerator[Event, None]:
        flt = self.flt
        async for ev in events:
            if isinstance(ev, TextDelta):
                seen = self._reported
                seen[ev.index] = ev.generated if ev.generated is not None else seen[ev.index] + 1
                c = self.choices[ev.index]
                if c.done:
                    continue
                if flt is None:
                    for out in self._parts(ev.index, ev.text, ev.logprobs):
                        yield out
                    continue
                c.aligned.push(ev.text, ev.logprobs)
                step = await flt.feed(ev.index, ev.text)
                lps = c.aligned.take(len(step.text))
                if step.text or lps:
                    for out in self._parts(ev.index, step.text, lps):
                        yield out
                if step.stop:
                    c.done = True
                    yield Finished(ev.index, "content_filter")
                    if all(ch.done for ch in self.choices):
                        return  # closing the worker stream stops generation
            elif isinstance(ev, ChoiceFinished):
                c = self.choices[ev.index]
                if c.done:
                    continue
                c.done = True
                reason: str = ev.finish_reason
                if flt is not None:
                    step = await flt.finish(ev.index)
                    lps = c.aligned.take(len(step.text), everything=not step.stop)
                    for out in self._parts(ev.index, step.text, lps):
                        yield out
                    if step.stop:
                        yield Finished(ev.index, "content_filter")
                        continue
                for p in c.reader.finish():
                    yield Part(ev.index, p)
                if c.reader.called and reason == "stop":
                    reason = "tool_calls"
                yield Finished(ev.index, reason)
            elif isinstance(ev, StreamUsage):
                yield ev
