"""How function tools, earlier tool calls and tool results reach a chat model.

Where the model's chat template renders tools (it reads a `tools` variable, as tool-aware
templates in GGUF files do), the template gets them, and the conversation keeps its assistant
`tool_calls` (arguments as objects, the common template convention) and `tool` messages.
Otherwise this fallback, documented in the README, writes them into the conversation:

- a system message (before the first message, or appended to the first system message) lists
  the tools, one JSON object a line (name, description, parameters);
- an assistant message's tool calls become its text: `{"tool_calls":[{"name":..., "arguments":...}]}`
  (after its content, if any);
- a `tool` message becomes a user message: `Result of <function name>: <content>`.

In both cases the system message ends with the answer format the gateway's grammar enforces
(`{"tool_calls":[...]}`), so that the model knows what it is being held to.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

ANSWER_FORMAT = ('To call functions, answer with only this JSON and nothing else: '
                 '{"tool_calls":[{"name":"<function name>","arguments":{<arguments>}}]}')
TOOLS_INTRO = ("You can call the following functions. Each is one JSON object with its name, its description "
               "and its parameters as a JSON Schema:")


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@lru_cache(maxsize=32)
def template_renders_tools(template: str) -> bool:
    """Whether the template reads a `tools` variable (parsed, never run)."""
    from jinja2 import Environment, TemplateSyntaxError, meta

    try:
        return "tools" in meta.find_undeclared_variables(Environment(autoescape=False).parse(template))  # noqa: S701 - parsed only
    except TemplateSyntaxError:
        return False  # the renderer reports the syntax error itself


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _native_call(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function", {})
    return {**call, "function": {**fn, "arguments": _arguments(fn.get("arguments"))}}


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0].get("role") in ("system", "developer") and isinstance(messages[0].get("content"), str):
        first = dict(messages[0])
        first["content"] = (first["content"] + "\n\n" + text) if first["content"] else text
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def prepare(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None,
            template: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools for the template) as the chat template should get them."""
    out = [dict(m) for m in messages]
    has_history = any(m.get("tool_calls") or m.get("role") == "tool" for m in out)
    if not tools and not has_history:
        return out, None
    native = template is not None and template_renders_tools(template)
    if native:
        for m in out:
            if m.get("tool_calls"):
                m["tool_calls"] = [_native_call(c) for c in m["tool_calls"] if isinstance(c, dict)]
        return (_with_system(out, ANSWER_FORMAT) if tools else out), (list(tools) if tools else None)
    names: dict[str, str] = {}
    converted = []
    for m in out:
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = c.get("function", {}) if isinstance(c, dict) else {}
                names[str(c.get("id"))] = str(fn.get("name"))
                calls.append({"name": fn.get("name"), "arguments": _arguments(fn.get("arguments"))})
            content = m.get("content") or ""
            text = compact({"tool_calls": calls})
            converted.append({"role": "assistant", "content": f"{content}\n{text}" if content else text})
        elif m.get("role") == "tool":
            name = names.get(str(m.get("tool_call_id")), "the function")
            converted.append({"role": "user", "content": f"Result of {name}: {m.get('content') or ''}"})
        else:
            converted.append(m)
    if tools:
        listing = "\n".join(compact({k: v for k, v in t.get("function", {}).items() if k != "strict"}) for t in tools)
        converted = _with_system(converted, f"{TOOLS_INTRO}\n{listing}\n{ANSWER_FORMAT}")
    return converted, None


def strings_in(value: Any) -> list[str]:
    """Every string inside a JSON-like value (keys included): what a control-token check must see."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), *strings_in(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in strings_in(v)]
    return []
