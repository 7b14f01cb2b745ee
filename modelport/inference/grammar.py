"""JSON Schema -> GBNF (llama.cpp's grammar format), for the subset modelport supports.

Structured outputs (`response_format: json_schema`) and tool-call arguments are generated under
a grammar built here, so an answer the model ends by itself always parses and validates against
its schema. The converter is ours, not llama-cpp-python's `json_schema_to_gbnf`, for three
reasons: that converter skips the keywords it does not know (here a keyword the grammar cannot
guarantee is refused with a 400 that names it, so a "validated" answer never ignores part of the
schema); importing it would load llama.cpp's shared library into the gateway; and the answers it
allows carry optional whitespace, which a small model fills with runs of spaces and newlines.
Answers here are compact JSON (no whitespace between tokens).

Supported keywords (everything else is refused, naming the keyword and where it is):
  type (one or a list of: object, array, string, number, integer, boolean, null),
  properties, required, additionalProperties (false; `true` or absent is accepted outside strict
  mode, where the answer still carries only the listed properties), items, minItems, maxItems,
  enum, const, anyOf, minLength, maxLength, $ref to `#/$defs/...` or `#/definitions/...`
  (recursion included), and the annotations title, description, default, examples, $schema,
  $comment, $id, deprecated, readOnly, writeOnly.

Strict mode (OpenAI's rules): the root is an object; every object lists all its properties in
`required` and sets `additionalProperties: false`; optional values are written as a union with
null (`"type": ["string", "null"]` or `anyOf`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from modelport.errors import InvalidInput

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$comment", "$id",
                         "deprecated", "readOnly", "writeOnly"})
KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
                      "enum", "const", "anyOf", "minLength", "maxLength", "$ref", "$defs", "definitions"}) | ANNOTATIONS
MAX_RULES = 2000
MAX_GRAMMAR_BYTES = 256 * 1024  # a larger GBNF is refused with 400 (the worker takes at most 1 MiB)
ALL_KINDS = frozenset({"object", "array", "string", "number", "boolean", "null"})
NESTING_KINDS = frozenset({"object", "array"})


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
MAX_DEPTH = 40
MAX_REPEAT = 1000  # minItems/maxItems/minLength/maxLength beyond this are refused (grammar size)

# Compact JSON values. A string's characters exclude raw control characters (JSON forbids them)
# and `\u` escapes of surrogates (a lone one is not a character; write the character itself).
PRIMITIVES = {
    "char": r'[^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" ( [0-9a-cA-Ce-fE-F] hex hex hex | [dD] [0-7] hex hex ) )',
    "hex": "[0-9a-fA-F]",
    "string": r'"\"" char* "\""',
    "integer": '"-"? ( "0" | [1-9] [0-9]{0,17} )',
    "number": 'integer ( "." [0-9]{1,17} )? ( [eE] [-+]? [0-9]{1,2} )?',
    "boolean": '"true" | "false"',
    "null": '"null"',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" ( string ":" value ( "," string ":" value )* )? "}"',
    "array": '"[" ( value ( "," value )* )? "]"',
}
_DEPENDS = {"string": ("char",), "char": ("hex",), "number": ("integer",),
            "value": ("object", "array", "string", "number", "boolean", "null"),
            "object": ("string", "value"), "array": ("value",)}


def literal(text: str) -> str:
    """A GBNF string literal matching exactly `text`."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


#: JSON Schema keywords the grammar cannot guarantee: named when refused. Any other unknown key
#: is not named (error messages never repeat what the caller wrote, P1).
UNSUPPORTED = frozenset({
    "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "oneOf",
    "allOf", "not", "if", "then", "else", "patternProperties", "propertyNames", "minProperties", "maxProperties",
    "uniqueItems", "contains", "minContains", "maxContains", "prefixItems", "additionalItems", "dependentRequired",
    "dependentSchemas", "dependencies", "unevaluatedProperties", "unevaluatedItems", "contentEncoding",
    "contentMediaType", "contentSchema", "$anchor", "$dynamicRef", "$dynamicAnchor", "$vocabulary", "$recursiveRef",
    "nullable", "discriminator"})


@dataclass
class Grammar:
    """Rules of one grammar being built; `root` names the start rule."""

    field_name: str  # the request field the schema came from, for error messages
    strict: bool
    rules: dict[str, str] = field(default_factory=dict)
    _by_body: dict[str, str] = field(default_factory=dict)
    _refs: dict[str, str] = field(default_factory=dict)
    _defs: dict[str, Any] = field(default_factory=dict)
    _def_where: dict[str, str] = field(default_factory=dict)

    def fail(self, where: str, what: str) -> InvalidInput:
        return InvalidInput(f"{self.field_name}: {what} (at {where}).", field=self.field_name)

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = PRIMITIVES[name]
            for dep in _DEPENDS.get(name, ()):
                self.primitive(dep)
        return name

    def rule(self, body: str, hint: str = "r") -> str:
        """A rule with this body (one per distinct body)."""
        if body in self._by_body:
            return self._by_body[body]
        if len(self.rules) >= MAX_RULES:
            raise InvalidInput(f"{self.field_name}: the schema is too large (more than {MAX_RULES} grammar rules).",
                               field=self.field_name)
        name = f"{hint}{len(self.rules)}"
        self.rules[name] = body
        self._by_body[body] = name
        return name

    def text(self, root_body: str) -> str:
        lines = [f"root ::= {root_body}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        return "\n".join(lines) + "\n"

    # -- schemas -------------------------------------------------------------------------------

    def add_schema(self, schema: Any) -> str:
        """The rule for values of one more root schema (its own `$defs`), under `self.strict`."""
        if self.strict and (not isinstance(schema, dict) or schema.get("type") != "object"):
            raise self.fail("$", "strict mode needs an object ('type': 'object') at the root of the schema")
        self._defs, self._refs = {}, {}
        return self.value(schema, "$")

    def load_defs(self, schema: dict[str, Any], where: str) -> None:
        for key in ("$defs", "definitions"):
            defs = schema.get(key)
            if defs is None:
                continue
            if not isinstance(defs, dict):
                raise self.fail(f"{where}.{key}", f"'{key}' must be an object of schemas")
            for i, (name, sub) in enumerate(defs.items()):
                self._defs[f"#/{key}/{name}"] = sub
                self._def_where[f"#/{key}/{name}"] = f"$.{key}[{i}]"

    def value(self, schema: Any, where: str, depth: int = 0, pending: frozenset[str] = frozenset()) -> str:
        """The rule (or inline GBNF) for values of `schema`. `pending` holds the $refs entered
        since the last character was consumed: entering one again would be left recursion."""
        if depth > MAX_DEPTH:
            raise self.fail(where, f"the schema nests deeper than {MAX_DEPTH} levels")
        if schema is True or schema == {}:
            if self.strict:
                raise self.fail(where, "strict mode needs a 'type' for every value")
            return self.primitive("value")
        if not isinstance(schema, dict):
            raise self.fail(where, "a schema must be a JSON object")
        unknown = sorted(set(schema) - KEYWORDS)
        if unknown:
            named = [k for k in unknown if k in UNSUPPORTED]
            if named:
                raise self.fail(where, f"the JSON Schema keyword '{named[0]}' is not supported; the supported "
                                       "keywords are listed in the README (structured outputs)")
            raise self.fail(where, "a key that is not a supported JSON Schema keyword (property names belong under "
                                   "'properties'); the supported keywords are listed in the README")
        if depth == 0:
            self.load_defs(schema, where)
        elif "$defs" in schema or "definitions" in schema:
            raise self.fail(where, "'$defs' is supported at the root of the schema only")
        if "$ref" in schema:
            return self._ref(schema, where, depth, pending)
        if "const" in schema:
            return self._literals([schema["const"]], schema, where, "const")
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise self.fail(where, "'enum' must be a non-empty list")
            return self._literals(values, schema, where, "enum")
        if "anyOf" in schema:
            options = schema["anyOf"]
            if not isinstance(options, list) or not options:
                raise self.fail(where, "'anyOf' must be a non-empty list of schemas")
            if set(schema) - ANNOTATIONS - {"anyOf"}:
                extra = sorted(set(schema) - ANNOTATIONS - {"anyOf"})[0]
                raise self.fail(where, f"'anyOf' cannot be combined with '{extra}' here; move it into each option")
            self._check_disjoint(options, where)
            alts = [self.value(o, f"{where}.anyOf[{i}]", depth + 1, pending) for i, o in enumerate(options)]
            return self.rule(" | ".join(dict.fromkeys(alts)), "any")
        types = schema.get("type")
        if types is None:
            if self.strict:
                raise self.fail(where, "strict mode needs a 'type' for every value")
            if set(schema) - ANNOTATIONS:
                raise self.fail(where, "a schema with constraints needs a 'type'")
            return self.primitive("value")
        names = types if isinstance(types, list) else [types]
        if not names or any(t not in TYPES for t in names) or len(set(names)) != len(names):
            raise self.fail(where, f"'type' must be one of {', '.join(TYPES)} or a list of distinct ones")
        alts = [self._typed(t, schema, where, depth, pending) for t in names]
        return alts[0] if len(alts) == 1 else self.rule(" | ".join(alts), "union")

    def _check_disjoint(self, options: list[Any], where: str) -> None:
        """Alternatives of an `anyOf` may not both be objects or both be arrays. llama.cpp's grammar
        keeps one parse state per way the text so far can match: two alternatives that can both
        open the same `[` or `{` (and recurse) double those states at every level, and the time
        to pick each token with them (measured: x4 per token, a shared worker held for minutes by
        a 173-byte schema). Overlapping primitives (a value or null, two string enums) stay finite."""
        seen: dict[str, int] = {}
        for i, option in enumerate(options):
            for kind in self._kinds(option, frozenset()) & NESTING_KINDS:
                if kind in seen:
                    raise self.fail(f"{where}.anyOf[{i}]", f"'anyOf' alternatives {seen[kind]} and {i} can both be "
                                    f"an {kind}; at most one alternative may be an "
                                    f"{kind} (e.g. a value or null)")
                seen[kind] = i

    def _kinds(self, schema: Any, visiting: frozenset[str]) -> frozenset[str]:
        """The JSON kinds a (sub)schema can produce: object, array, string, number, boolean, null."""
        if not isinstance(schema, dict):
            return ALL_KINDS
        if "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str) or ref not in self._defs:
                return ALL_KINDS  # refused when the value itself is built
            if ref in visiting:
                return frozenset()  # a cycle adds no kind of its own
            return self._kinds(self._defs[ref], visiting | {ref})
        if "const" in schema:
            return frozenset({_kind_of(schema["const"])})
        if isinstance(schema.get("enum"), list):
            return frozenset(_kind_of(v) for v in schema["enum"])
        if isinstance(schema.get("anyOf"), list):
            return frozenset().union(*(self._kinds(o, visiting) for o in schema["anyOf"]))
        types = schema.get("type")
        if types is None:
            return ALL_KINDS
        names = types if isinstance(types, list) else [types]
        return frozenset("number" if t == "integer" else t for t in names if isinstance(t, str))

    def _ref(self, schema: dict[str, Any], where: str, depth: int, pending: frozenset[str]) -> str:
        ref = schema["$ref"]
        if set(schema) - ANNOTATIONS - {"$ref"}:
            raise self.fail(where, "'$ref' cannot be combined with other keywords")
        if not isinstance(ref, str) or ref not in self._defs:
            raise self.fail(where, "'$ref' must point to a schema under '#/$defs/' or '#/definitions/' of the root")
        if ref in pending:
            raise self.fail(where, "a '$ref' refers back to itself without an object or array in between")
        if ref in self._refs:
            return self._refs[ref]
        name = f"ref{len(self.rules)}"
        self._refs[ref] = name
        self.rules[name] = "null"  # placeholder: keeps the order; replaced below (recursion reads the name)
        self.rules[name] = self.value(self._defs[ref], self._def_where[ref], depth + 1, pending | {ref})
        return name

    def _literals(self, values: list[Any], schema: dict[str, Any], where: str, keyword: str) -> str:
        other = set(schema) - ANNOTATIONS - {keyword, "type"}
        if other:
            raise self.fail(where, f"'{keyword}' cannot be combined with '{sorted(other)[0]}'")
        types = schema.get("type")
        if types is not None:
            allowed = set(types if isinstance(types, list) else [types])
            for v in values:
                if _json_type(v) not in allowed and not (_json_type(v) == "integer" and "number" in allowed):
                    raise self.fail(where, f"a value of '{keyword}' does not have the schema's 'type'")
        return self.rule(" | ".join(dict.fromkeys(literal(compact(v)) for v in values)), "lit")

    def _typed(self, kind: str, schema: dict[str, Any], where: str, depth: int, pending: frozenset[str]) -> str:
        if kind == "object":
            return self._object(schema, where, depth)
        if kind == "array":
            return self._array(schema, where, depth)
        if kind == "string":
            low, high = _bounds(self, schema, where, "minLength", "maxLength")
            if low == 0 and high is None:
                return self.primitive("string")
            self.primitive("string")
            return self.rule(f'"\\"" char{_repeat(low, high)} "\\""', "str")
        return self.primitive(kind)

    def _object(self, schema: dict[str, Any], where: str, depth: int) -> str:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise self.fail(where, "'properties' must be an object of schemas")
        required = schema.get("required", [])
        if not isinstance(required, list) or any(not isinstance(r, str) for r in required):
            raise self.fail(where, "'required' must be a list of property names")
        missing = [r for r in required if r not in props]
        if missing:
            raise self.fail(where, f"'required' names a property that is not in 'properties' "
                                   f"(item {required.index(missing[0])})")
        extra = schema.get("additionalProperties", None)
        if self.strict:
            if extra is not False:
                raise self.fail(where, "strict mode needs 'additionalProperties': false on every object")
            absent = [p for p in props if p not in required]
            if absent:
                raise self.fail(where, f"strict mode needs every property in 'required' (property "
                                       f"{list(props).index(absent[0])} is not); make an optional value a union "
                                       "with null instead")
        elif extra not in (None, True, False):
            raise self.fail(where, "'additionalProperties' as a schema is not supported; use false")
        if not props:
            return self.rule('"{" "}"', "obj")
        members = []
        for i, (key, sub) in enumerate(props.items()):
            rule = self.value(sub, f"{where}.properties[{i}]", depth + 1)
            members.append((f"{literal(compact(key) + ':')} {rule}", key in required))
        return self.rule(f'"{{" {_members(self, members)} "}}"', "obj")

    def _array(self, schema: dict[str, Any], where: str, depth: int) -> str:
        if "items" not in schema:
            if self.strict:
                raise self.fail(where, "strict mode needs 'items' for every array")
            item = self.primitive("value")
        else:
            if not isinstance(schema["items"], (dict, bool)):
                raise self.fail(where, "'items' must be one schema (tuple forms are not supported)")
            item = self.value(schema["items"], f"{where}.items", depth + 1)
        low, high = _bounds(self, schema, where, "minItems", "maxItems")
        if high == 0:
            return self.rule('"[" "]"', "arr")
        tail = self.rule(f'"," {item}', "next")
        rest = _repeat(max(low - 1, 0), None if high is None else high - 1)
        body = f"{item} {tail}{rest}"
        return self.rule(f'"[" {body} "]"' if low > 0 else f'"[" ( {body} )? "]"', "arr")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _bounds(g: Grammar, schema: dict[str, Any], where: str, lo_key: str, hi_key: str) -> tuple[int, int | None]:
    low, high = schema.get(lo_key, 0), schema.get(hi_key)
    for key, v in ((lo_key, low), (hi_key, high)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_REPEAT):
            raise g.fail(where, f"'{key}' must be an integer from 0 to {MAX_REPEAT}")
    if high is not None and high < low:
        raise g.fail(where, f"'{hi_key}' is smaller than '{lo_key}'")
    return low, high


def _repeat(low: int, high: int | None) -> str:
    if high is None:
        return "*" if low == 0 else ("+" if low == 1 else f"{{{low},}}")
    return f"{{{low},{high}}}"


def _members(g: Grammar, members: list[tuple[str, bool]]) -> str:
    """Properties in schema order, each optional one may be left out; commas only between members."""
    if all(req for _, req in members):
        return ' "," '.join(m for m, _ in members)
    # tail(j): what may follow once some member before j was written
    tails: list[str] = [""] * (len(members) + 1)
    for j in range(len(members) - 1, -1, -1):
        m, req = members[j]
        after = tails[j + 1]
        step = f'"," {m}{" " + after if after else ""}'
        body = step if req else f"( {step} )?" + (f" {after}" if after else "")
        tails[j] = g.rule(body, "tail")
    # the first member written is member i: every member before it is optional (left out)
    alts = []
    for i, (m, req) in enumerate(members):
        alts.append(f"{m} {tails[i + 1]}" if tails[i + 1] else m)
        if req:
            return "( " + " | ".join(alts) + " )"
    return "( " + " | ".join(alts) + " )?"  # every member is optional: {} is allowed


def json_schema_gbnf(schema: Any, *, strict: bool, field_name: str = "response_format") -> str:
    """GBNF text whose sentences are exactly compact JSON values valid against `schema`; raises
    InvalidInput (400) naming an unsupported or (in strict mode) disallowed feature."""
    g = Grammar(field_name=field_name, strict=strict)
    return check_size(g.text(g.add_schema(schema)), field_name)


def check_size(gbnf: str, field_name: str) -> str:
    """Refuse a grammar larger than MAX_GRAMMAR_BYTES (400 naming the field), before it is built
    into a worker request (which would fail with a 500) or compiled by llama.cpp."""
    if len(gbnf.encode()) > MAX_GRAMMAR_BYTES:
        raise InvalidInput(f"{field_name}: the schema makes a grammar larger than {MAX_GRAMMAR_BYTES // 1024} KiB "
                           "(long enum or const values, or many properties); make it smaller.", field=field_name)
    return gbnf
