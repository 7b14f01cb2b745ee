"""The content filter on the request path (P4): prompts before inference, outputs while they
stream, embeddings inputs, in one stable schema on both inference APIs.

A deployment whose filter is off pays nothing here. With it on, a prompt is first counted by
the deployment's worker (its own tokenizer and chat template; nothing is generated), and one
that cannot fit the model's context is refused before it costs any screening; then it is
screened, within the workspace's bound on concurrent screening (429 beyond). A blocked prompt
is never generated from; a filtered output segment ends its choice with `finish_reason:
"content_filter"` (buffered mode, and every non-streamed answer: none of that segment's text is
sent). Screening failures raise SafetyUnavailable (503): the filter fails closed.

What is screened for a chat is exactly what the worker receives (`prompt_text` of the messages
the gateway sends, whose content parts the runtime's own `flatten_content` joined).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from modelport.inference.calls import PromptSize
from modelport.inference.routing import Route
from modelport.safety.screening import ContentFiltered, Screener, StreamScreener, StreamStep, empty_results
from modelport.safety.service import SafetyService


def prompt_text(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    """The text screened for a chat, one piece a line: each message's name and content as the
    worker receives them (content already flattened to a string; a tool result is a `tool`
    message's content), the name and argument texts of each earlier tool call, and every text the
    caller wrote into a tool definition (name, description, property names, titles, descriptions
    and enum, const, default and example values at any depth of its parameter schema).

    Tool definitions and arguments are screened as their texts, not as JSON: the classifier reads
    JSON syntax and schema keywords as a prompt-injection attempt (a plain weather tool scored
    0.48 on the jailbreak head, whose threshold is 0.2). Every string the caller chose is in."""
    parts: list[Any] = []
    for m in messages:
        parts += [m.get("name"), m.get("content")]
        for call in m.get("tool_calls") or []:
            parts += [call["function"]["name"], *argument_texts(call["function"]["arguments"])]
    for t in tools or []:
        fn = t["function"]
        parts += [fn.get("name"), fn.get("description"), *schema_texts(fn.get("parameters"))]
    return "\n".join(p for p in parts if isinstance(p, str) and p)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [] if value is None or isinstance(value, bool) else [str(value)]


def argument_texts(arguments: str) -> list[str]:
    """A tool call's arguments: its keys and values when it is JSON, else the text itself."""
    try:
        return _strings(orjson.loads(arguments))
    except orjson.JSONDecodeError:
        return [arguments]


_CALLER_TEXT = frozenset({"description", "title", "enum", "const", "default", "examples", "$comment"})
_NAMED = frozenset({"properties", "$defs", "definitions", "patternProperties"})


def schema_texts(schema: Any) -> list[str]:
    """The texts a caller wrote into a JSON Schema (not its keywords or type names)."""
    out: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in _CALLER_TEXT:
                out += _strings(value)
            elif key in _NAMED and isinstance(value, dict):
                for name, sub in value.items():
                    out += [str(name), *schema_texts(sub)]
            elif key == "required" and isinstance(value, list):
                continue  # names already listed under properties (or refused by the grammar)
            elif isinstance(value, dict | list):
                out += schema_texts(value)
            elif isinstance(value, str) and key not in ("type", "$ref", "format", "pattern", "$schema", "$id"):
                out.append(value)
    elif isinstance(schema, list):
        for item in schema:
            out += schema_texts(item)
    return out


def _reasons(results: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(what blocked, what was found) in a merged results object, for the counters."""
    filtered = tuple(k for k, v in results.items() if v.get("filtered"))
    detected = tuple(k for k, v in results.items() if v.get("detected") or v.get("severity", "safe") != "safe")
    return filtered, detected


@dataclass
class RequestFilter:
    """One request's filter: the prompt verdict and one stream screener per choice."""

    safety: SafetyService
    route: Route
    screener: Screener
    prompt_results: dict[str, Any]
    streams: dict[int, StreamScreener] = field(default_factory=dict)

    def prompt_filter_results(self) -> list[dict[str, Any]]:
        return [{"prompt_index": 0, "content_filter_results": self.prompt_results}]

    def stream(self, index: int, *, buffered: bool | None = None) -> StreamScreener:
        if index not in self.streams:
            self.streams[index] = self.screener.stream(buffered=buffered)
        return self.streams[index]

    async def feed(self, index: int, text: str) -> StreamStep:
        return await self.stream(index).feed(text)

    async def finish(self, index: int) -> StreamStep:
        return await self.stream(index).finish()

    def results(self, index: int) -> dict[str, Any]:
        return self.stream(index).results() if index in self.streams else empty_results()

    async def screen_text(self, index: int, text: str) -> tuple[str, bool]:
        """A whole (non-streamed) completion: the text that may be returned, and whether it was cut.
        Always screened as `buffered`: the text of a filtered segment is never returned."""
        stream = self.stream(index, buffered=True)
        first = await stream.feed(text)
        released, stop = first.text, first.stop
        if not stop:
            last = await stream.finish()
            released, stop = released + last.text, last.stop
        return released, stop

    async def close(self) -> None:
        for s in self.streams.values():
            await s.aclose()
            filtered, detected = _reasons(s.results())
            self.safety.count_results(self.route.id, "completion", filtered, detected)


async def screen_prompt(safety: SafetyService, route: Route, text: str, size: PromptSize) -> RequestFilter | None:
    """None when the deployment's filter is off; raises ContentFiltered for a blocked prompt."""
    if not route.content_filter.enabled:
        return None
    counter = await size.counter()  # may start the workers: before one of the workspace's places is taken
    async with safety.admission(route.workspace_id):
        await size.check(counter)
        screener = await safety.screener(route.workspace_id, route.content_filter, route.geography)
        verdict = await screener.screen_prompt(text)
    safety.count_results(route.id, "prompt", verdict.filtered_reasons, verdict.detected)
    if verdict.filtered:
        raise ContentFiltered(verdict)
    return RequestFilter(safety=safety, route=route, screener=screener, prompt_results=verdict.results)


async def screen_inputs(safety: SafetyService, route: Route, texts: list[str],
                        size: PromptSize) -> list[dict[str, Any]] | None:
    """Embeddings inputs: every text screened as a prompt; one blocked input refuses the request."""
    if not route.content_filter.enabled:
        return None
    counter = await size.counter()
    async with safety.admission(route.workspace_id):
        await size.check(counter)
        screener = await safety.screener(route.workspace_id, route.content_filter, route.geography)
        verdicts = await screener.screen(texts, "prompt")
    for v in verdicts:
        safety.count_results(route.id, "prompt", v.filtered_reasons, v.detected)
    blocked = next((v for v in verdicts if v.filtered), None)
    if blocked is not None:
        raise ContentFiltered(blocked)
    return [{"prompt_index": i, "content_filter_results": v.results} for i, v in enumerate(verdicts)]
