"""Tool calling and structured outputs on the gateway side: what the model may write (a GBNF
grammar, built from the tools' JSON Schemas and `tool_choice`), and reading its answer back into
OpenAI's `tool_calls`, incrementally, so that streamed answers carry tool-call deltas.

The model writes a tool call as one compact JSON object, whatever its chat template:

    {"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}

The grammar allows exactly that: the names of the offered functions, each function's arguments
valid against its `parameters` schema, one call or (with `parallel_tool_calls`) several. With
`tool_choice: "auto"` the model may instead answer in plain text, which then cannot start with
`{"tool_calls":`. How the tools and earlier calls are shown to the model is the chat template's
business in the worker (modelport.runtimes.tool_prompt).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from modelport.errors import InternalError, InvalidInput
from modelport.inference.grammar import Grammar, check_size, compact, json_schema_gbnf, literal

CALL_PREFIX = '{"tool_calls":['
_NAME_OPEN = '{"name":"'
_ARGS_OPEN = '","arguments":'
EMPTY_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False, "required": []}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str | None
    parameters: dict[str, Any]
    strict: bool

    def wire(self) -> dict[str, Any]:
        """The definition handed to the worker (and its chat template), OpenAI's shape."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description:
            fn["description"] = self.description
        fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class Plan:
    """What the worker is asked for, and how its answer is read."""

    grammar: str | None
    tools: list[dict[str, Any]] | None  # shown to the model
    calls: bool  # the answer may be a tool call
    response_format: Literal["text", "json_object"]  # what the worker's own `response_format` says


def plan(tools: list[Tool], choice: str | None, *, parallel: bool, response_format: Any) -> Plan:
    """`response_format` is the request's (None, or one with `type` and `json_schema`)."""
    kind = response_format.type if response_format is not None else "text"
    text_schema: tuple[Any, bool] | None = None
    if kind == "json_schema":
        spec = response_format.json_schema
        text_schema = (spec.schema_, bool(spec.strict))
    elif kind == "json_object" and choice is not None:
        text_schema = ({"type": "object"}, False)
    if choice is None:
        grammar = json_schema_gbnf(text_schema[0], strict=text_schema[1], field_name="response_format.json_schema"
                                   ".schema") if text_schema is not None and kind == "json_schema" else None
        worker_format: Literal["text", "json_object"] = "json_object" if kind == "json_object" else "text"
        return Plan(grammar=grammar, tools=None, calls=False, response_format=worker_format)
    grammar = grammar_for(tools, choice, parallel=parallel, text_schema=text_schema)
    return Plan(grammar=grammar, tools=[t.wire() for t in tools], calls=True, response_format="text")


def grammar_for(tools: list[Tool], choice: str | None, *, parallel: bool, text_schema: tuple[Any, bool] | None,
                field_name: str = "tools") -> str | None:
    """GBNF for an answer to a request with `tools` under `choice` (None: no tool may be called,
    `"auto"`, `"required"` or one function's name), `text_schema` ((schema, strict) of a
    json_schema response format, for the answer that is not a call). None when nothing is constrained."""
    g = Grammar(field_name=field_name, strict=False)
    alts: list[str] = []
    if choice is not None and tools:
        offered = [t for t in tools if choice in ("auto", "required") or t.name == choice]
        calls = []
        for t in offered:
            g.field_name = f"{field_name}[{tools.index(t)}].function.parameters"
            g.strict = t.strict
            args = g.add_schema(t.parameters)
            calls.append(g.rule(f'{literal(_NAME_OPEN + t.name + _ARGS_OPEN)} {args} "}}"', "call"))
        call = g.rule(" | ".join(calls), "calls")
        # a named function is called once; `parallel_tool_calls` lets auto/required call several
        more = f' ( "," {call} )*' if parallel and choice in ("auto", "required") else ""
        alts.append(f'{literal(CALL_PREFIX)} {call}{more} {literal("]}")}')
    if choice in (None, "auto"):
        if text_schema is not None:
            g.field_name, g.strict = "response_format.json_schema.schema", text_schema[1]
            alts.append(g.add_schema(text_schema[0]))
        elif choice == "auto":
            # plain text: anything that does not open a JSON object (so it cannot be read as a call)
            alts.append(g.rule(r'[^{\x00] [^\x00]*', "text"))
    if not alts:
        return None
    return check_size(g.text(" | ".join(alts)), field_name)


def parse_tools(raw: list[dict[str, Any]] | None, field_name: str = "tools") -> list[Tool]:
    """OpenAI chat `tools` ({"type": "function", "function": {...}}) into Tools; 400 naming what is wrong."""
    tools: list[Tool] = []
    for i, item in enumerate(raw or []):
        where = f"{field_name}[{i}]"
        if not isinstance(item, dict) or item.get("type") != "function" or not isinstance(item.get("function"), dict):
            raise InvalidInput(f"{where}: only function tools are supported "
                               "({'type': 'function', 'function': {...}}).", field=where)
        tools.append(tool_from(item["function"], where + ".function"))
    _unique(tools, field_name)
    return tools


def tool_from(fn: dict[str, Any], where: str) -> Tool:
    import re

    name = fn.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise InvalidInput(f"{where}.name: a function name is 1-64 letters, digits, '_' or '-'.", field=where + ".name")
    description = fn.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidInput(f"{where}.description must be a string.", field=where + ".description")
    params = fn.get("parameters")
    if params is None:
        params = EMPTY_PARAMETERS
    if not isinstance(params, dict) or params.get("type") != "object":
        raise InvalidInput(f"{where}.parameters must be a JSON Schema of 'type': 'object'.",
                           field=where + ".parameters")
    strict = fn.get("strict") or False
    if not isinstance(strict, bool):
        raise InvalidInput(f"{where}.strict must be true or false.", field=where + ".strict")
    unknown = sorted(set(fn) - {"name", "description", "parameters", "strict"})
    if unknown:
        raise InvalidInput(f"{where} takes only name, description, parameters and strict.", field=where)
    return Tool(name=name, description=description, parameters=params, strict=strict)


def _unique(tools: list[Tool], field_name: str) -> None:
    seen: dict[str, int] = {}
    for i, t in enumerate(tools):
        if t.name in seen:
            raise InvalidInput(f"{field_name}[{seen[t.name]}] and {field_name}[{i}] have the same name; names must be "
                               "unique.", field=field_name)
        seen[t.name] = i


def parse_choice(raw: Any, tools: list[Tool], field_name: str = "tool_choice") -> str | None:
    """`tool_choice` -> None (no call), "auto", "required" or a function name."""
    if raw is None:
        return "auto" if tools else None
    if raw in ("none", "auto", "required"):
        if raw != "none" and not tools:
            raise InvalidInput(f"{field_name} '{raw}' needs 'tools'.", field=field_name)
        return None if raw == "none" else raw
    name = None
    if isinstance(raw, dict) and raw.get("type") == "function":
        fn = raw.get("function")
        name = fn.get("name") if isinstance(fn, dict) else raw.get("name")  # chat | Responses shape
    if not isinstance(name, str):
        raise InvalidInput(f"{field_name} must be 'none', 'auto', 'required' or "
                           "{'type': 'function', 'function': {'name': ...}}.", field=field_name)
    if name not in {t.name for t in tools}:
        raise InvalidInput(f"{field_name} names a function that is not in 'tools'.", field=field_name)
    return name


def call_id() -> str:
    return "call_" + secrets.token_hex(12)


# -- reading the answer back --------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    text: str
    logprobs: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class CallStart:
    index: int  # position among this choice's calls
    id: str
    name: str


@dataclass(frozen=True)
class CallArgs:
    index: int
    text: str


Piece = Content | CallStart | CallArgs


class AnswerReader:
    """Reads one choice's answer, fed in order as it is released, into content and tool calls.

    `calls` False: everything is content. True: the answer may be a tool call; text is held
    while it could still be the start of `{"tool_calls":[`, then read as a call or released as
    content. The grammar guarantees the call's format, so a deviation is our bug (500)."""

    def __init__(self, calls: bool) -> None:
        self.mode = "undecided" if calls else "content"
        self._held: list[tuple[str, list[dict[str, Any]] | None]] = []
        self._buf = ""
        self._state = "prefix"
        self._depth = 0
        self._in_string = False
        self._escape = False
        self.count = 0  # calls started

    @property
    def called(self) -> bool:
        return self.mode == "calls"

    def feed(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> list[Piece]:
        if self.mode == "content":
            return [Content(text, logprobs)] if text or logprobs else []
        if self.mode == "undecided":
            self._held.append((text, logprobs))
            held = "".join(t for t, _ in self._held)
            if CALL_PREFIX.startswith(held):
                return []
            if not held.startswith(CALL_PREFIX):
                return self._release_held()
            self.mode = "calls"
            self._held = []
            return self._read(held)
        return self._read(text)

    def finish(self) -> list[Piece]:
        """End of the answer: held text that never became a call is content."""
        if self.mode == "undecided" and self._held:
            return self._release_held()
        return []

    def _release_held(self) -> list[Piece]:
        self.mode = "content"
        held = "".join(t for t, _ in self._held)
        tracked = any(ls is not None for _, ls in self._held)
        lps = [lp for _, ls in self._held for lp in (ls or [])]
        self._held = []
        return [Content(held, lps if tracked else None)] if held or lps else []

    def _expect(self, token: str) -> bool:
        if len(self._buf) < len(token):
            if not token.startswith(self._buf):
                raise InternalError("the model's tool call does not follow its grammar")
            return False
        if not self._buf.startswith(token):
            raise InternalError("the model's tool call does not follow its grammar")
        self._buf = self._buf[len(token):]
        return True

    def _read(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        self._buf += text
        while self._buf:
            state = self._state
            if state == "prefix":
                if not self._expect(CALL_PREFIX):
                    break
                self._state = "open"
            elif state == "open":
                if not self._expect(_NAME_OPEN):
                    break
                self._state = "name"
            elif state == "name":
                end = self._buf.find('"')
                if end == -1:
                    break
                name, self._buf = self._buf[:end], self._buf[end:]
                out.append(CallStart(self.count, call_id(), name))
                self.count += 1
                self._state = "args_open"
            elif state == "args_open":
                if not self._expect('"' + _ARGS_OPEN[1:]):
                    break
                self._state, self._depth = "args", 0
            elif state == "args":
                n = self._scan_args()
                if n:
                    out.append(CallArgs(self.count - 1, self._buf[:n]))
                    self._buf = self._buf[n:]
                if self._depth == 0 and n:
                    self._state = "close"
                if not n:
                    break
            elif state == "close":
                if not self._expect("}"):
                    break
                self._state = "next"
            elif state == "next":
                if self._buf[0] == ",":
                    self._buf = self._buf[1:]
                    self._state = "open"
                elif self._expect("]}"):
                    self._state = "done"
                else:
                    break
            else:  # done: the grammar allows nothing after the call list
                raise InternalError("the model wrote past the end of its tool calls")
        return out

    def _scan_args(self) -> int:
        """Characters of the arguments' JSON in the buffer, up to the end of the value."""
        for i, ch in enumerate(self._buf):
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        return len(self._buf)


def compact_arguments(text: str) -> str:
    """Arguments as sent back in an assistant message: compact JSON when it parses."""
    import json

    try:
        return compact(json.loads(text))
    except ValueError:
        return text
