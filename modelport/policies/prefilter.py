"""Deciding in Python, exactly, what Cedar would decide for each forbid policy, where that is certain.

A saved policy is compiled once per action (from Cedar's JSON form) into a check: a function of
the caller and the model or deployment that answers True (the policy certainly matches, and
evaluating it cannot fail), False (it certainly does not match and cannot fail), or None (not
certain: Cedar must evaluate it). The engine drops the policies that are False, counts those that
are True as matched, and passes only the rest to Cedar, with entities holding only what those
read; when none is left, Cedar is not called at all.

What is followed exactly: the scope (`principal == / in / is`, the action, `resource == / in /
is`), attributes of the caller, the model and the deployment (a record: the content filter),
literals (strings, longs, booleans, entities, sets, records), `==` `!=` (typed: `1 == true` is
false, sets compare as sets, records field by field), `< <= > >=`, `+ - *` and negation (a
result outside Cedar's 64-bit range is an overflow: not certain), `in` (no entity here has
parents, so it is equality), `is`, `has`, `like`, `contains` `containsAll` `containsAny`
`isEmpty`, `if then else`, and `&& || !` in Cedar's order of evaluation. Anything else (an
extension function such as `ip` or `decimal`, tags, an attribute of an entity literal) is not
certain, and so is every expression that contains it, unless an `&&` or `||` to its left
already decided the result (Cedar does not evaluate the right side then). An `&&` whose left side
is not certain is not certain even when its right side is false: the left side might fail, and a
policy that fails denies (the engine fails closed), so it must go to Cedar.

Speed: the action is fixed when a check is compiled (a set is per action), so the action scope,
`action ==` tests, `is` and `has` on the entities fold to constants. Every attribute of the schema
has a known type, so an expression built only of attributes and literals cannot fail and is
compiled to plain Python (`r.model.publisher == "x"`, `r.geography in {"eu", "us"}`); the general
three-valued evaluation is used only where a value may be unknown.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from modelport.policies import compiler
from modelport.policies.facts import DeploymentFacts, FilterFacts, ModelFacts, Resource, UserFacts

#: What a check answers: True / False certainly, None where Cedar must decide.
Check = Callable[[UserFacts, Resource], "bool | None"]
Fn = Callable[[UserFacts, Resource], Any]  # a value of Cedar, or UNKNOWN


class _Unknown:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()  # a value Python cannot be certain of (Cedar might compute it, or fail)

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

#: The schema's attributes and their types ("entity:T", "set:str", "record:ContentFilter", or a primitive).
_SCHEMA: dict[str, dict[str, str]] = {
    "User": {"name": "str", "role": "str", "workspace": "str", "platform_admin": "bool"},
    "Model": {**{a: "str" for a in ("name", "version", "publisher", "license", "format", "task", "source",
                                    "scan_status", "sha256", "offer", "owner")}, "curated": "bool"},
    "Deployment": {"name": "str", "workspace": "str", "model": "entity:Model", "type": "str", "geography": "str",
                   "instances": "long", "public_network_access": "bool", "allowed_ranges": "set:str",
                   "content_filter": "record:ContentFilter"},
    "ContentFilter": {"enabled": "bool", **{a: "str" for a in ("hate", "sexual", "violence", "self_harm", "loosest",
                                                                "backend", "judge_deployment", "jailbreak",
                                                                "profanity")}},
}
_TYPE_NAME = {UserFacts: "User", ModelFacts: "Model", DeploymentFacts: "Deployment"}
_PRIMITIVE = {"str": str, "long": int, "bool": bool}


class EntityRef:
    """An entity literal (`Model::"m"`, the action): its type and id, no attributes known."""

    __slots__ = ("id", "type")

    def __init__(self, type_: str, id_: str) -> None:
        self.type, self.id = type_, id_


# -- the general (three-valued) evaluation -------------------------------------------------------

def _uid(v: Any) -> tuple[str, str] | None:
    if isinstance(v, EntityRef):
        return v.type, v.id
    name = _TYPE_NAME.get(type(v))
    return None if name is None else (name, v.id)


def _kind(v: Any) -> str:
    t = type(v)
    if t is str:
        return "str"
    if t is bool:
        return "bool"
    if t is int:
        return "long"
    if t is tuple:
        return "set"
    if t is dict or t is FilterFacts:
        return "record"
    if _uid(v) is not None:
        return "entity"
    return "?"


def _record(v: Any) -> dict:
    return v.fields if isinstance(v, FilterFacts) else v


def equal(a: Any, b: Any) -> bool | _Unknown:
    """Cedar's `==` on two known values (values of different types are unequal, never an error)."""
    ka, kb = _kind(a), _kind(b)
    if ka == "?" or kb == "?":
        return UNKNOWN
    if ka != kb:
        return False
    if ka == "entity":
        return _uid(a) == _uid(b)
    if ka == "set":
        return _subset(a, b) and _subset(b, a)
    if ka == "record":
        ra, rb = _record(a), _record(b)
        if ra.keys() != rb.keys():
            return False
        for k in ra:
            e = equal(ra[k], rb[k])
            if e is not True:
                return e
        return True
    return a == b


def _member(x: Any, s: tuple) -> bool | _Unknown:
    unknown = False
    for y in s:
        e = equal(x, y)
        if e is True:
            return True
        if e is UNKNOWN:
            unknown = True
    return UNKNOWN if unknown else False


def _subset(a: tuple, b: tuple) -> bool | _Unknown:
    for x in a:
        m = _member(x, b)
        if m is not True:
            return m
    return True


def _attr(v: Any, name: str) -> Any:
    type_name = _TYPE_NAME.get(type(v))
    if type_name is not None:
        return getattr(v, name) if name in _SCHEMA[type_name] else UNKNOWN  # Cedar: no such attribute, an error
    if isinstance(v, FilterFacts):
        return v.fields.get(name, UNKNOWN)
    if type(v) is dict:
        return v.get(name, UNKNOWN)
    return UNKNOWN  # an entity literal's attributes are not known here


def _has(v: Any, name: str) -> Any:
    type_name = _TYPE_NAME.get(type(v))
    if type_name is not None:
        return name in _SCHEMA[type_name]
    if isinstance(v, FilterFacts):
        return name in v.fields
    if type(v) is dict:
        return name in v
    return UNKNOWN


def _checked(n: int) -> Any:
    return n if _I64_MIN <= n <= _I64_MAX else UNKNOWN  # an overflow: Cedar fails


def _in(uid: tuple[str, str], right: Any) -> Any:
    """`x in y`: no entity of a request has parents, so x is in y only where it is y (or one of y)."""
    if type(right) is tuple:
        uids = [_uid(x) for x in right]
        return UNKNOWN if any(x is None for x in uids) else uid in uids
    other = _uid(right)
    return UNKNOWN if other is None else uid == other


def _ne(x: Any, y: Any) -> Any:
    e = equal(x, y)
    return UNKNOWN if e is UNKNOWN else not e


def _cmp(fn: Callable[[int, int], bool]) -> Callable[[Any, Any], Any]:
    return lambda x, y: fn(x, y) if type(x) is int and type(y) is int else UNKNOWN


def _arith(fn: Callable[[int, int], int]) -> Callable[[Any, Any], Any]:
    return lambda x, y: _checked(fn(x, y)) if type(x) is int and type(y) is int else UNKNOWN


def _contains(s: Any, x: Any) -> Any:
    return _member(x, s) if type(s) is tuple else UNKNOWN


def _contains_all(s: Any, t: Any) -> Any:
    return _subset(t, s) if type(s) is tuple and type(t) is tuple else UNKNOWN


def _contains_any(s: Any, t: Any) -> Any:
    if type(s) is not tuple or type(t) is not tuple:
        return UNKNOWN
    unknown = False
    for x in t:
        m = _member(x, s)
        if m is True:
            return True
        unknown = unknown or m is UNKNOWN
    return UNKNOWN if unknown else False


def _in_op(x: Any, y: Any) -> Any:
    uid = _uid(x)
    return UNKNOWN if uid is None else _in(uid, y)


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "==": equal, "!=": _ne,
    "<": _cmp(operator.lt), "<=": _cmp(operator.le), ">": _cmp(operator.gt), ">=": _cmp(operator.ge),
    "+": _arith(operator.add), "-": _arith(operator.sub), "*": _arith(operator.mul),
    "contains": _contains, "containsAll": _contains_all, "containsAny": _contains_any, "in": _in_op,
}

_NONE = object()  # E.const when the expression is not a constant


@dataclass(frozen=True)
class E:
    """A compiled expression: its function, its static type where known (then it never answers
    UNKNOWN and its value is of that type), its value where constant, its attribute path."""

    fn: Fn
    kind: str | None = None
    const: Any = _NONE
    path: tuple[str, ...] | None = None  # ("r", "model", "publisher"): an attribute chain from u or r


def _const(v: Any) -> E:
    kind = None
    if v is not UNKNOWN:
        k = _kind(v)
        if k in ("str", "long", "bool"):
            kind = k
        elif (uid := _uid(v)) is not None:
            kind = "entity:" + uid[0]
        elif k == "set" and all(type(x) is str for x in v):
            kind = "set:str"
    return E(lambda u, r: v, kind, v)


def _literal(v: Any) -> Any:
    """A literal of Cedar's JSON form as a value here (UNKNOWN for an extension value)."""
    if isinstance(v, bool | str) or (isinstance(v, int) and _I64_MIN <= v <= _I64_MAX):
        return v
    if isinstance(v, list):
        items = tuple(_literal(x) for x in v)
        return UNKNOWN if any(x is UNKNOWN for x in items) else items
    if isinstance(v, dict):
        if "__entity" in v:
            e = v["__entity"]
            return EntityRef(e["type"], e["id"])
        if "__extn" in v:
            return UNKNOWN
        fields = {k: _literal(x) for k, x in v.items()}
        return UNKNOWN if any(x is UNKNOWN for x in fields.values()) else fields
    return UNKNOWN


def _pattern(parts: list) -> Callable[[str], bool] | None:
    """A matcher for Cedar's `like` pattern, linear in the text: the literal before the first
    wildcard must be a prefix, the one after the last a suffix, and the ones between are found
    leftmost, in order (with only `*` wildcards, the leftmost occurrence of each is never worse
    than any other). A backtracking regex (`.*` per wildcard) took time growing as the text's
    length to the power of the wildcards: a workspace owner's policy of ten wildcards held the
    GIL for minutes on a 63-character deployment name. None: a pattern part not understood."""
    pieces: list[str] = []
    current: list[str] = []
    for p in parts:
        if p == "Wildcard":
            pieces.append("".join(current))
            current = []
        elif isinstance(p, dict) and isinstance(p.get("Literal"), str):
            current.append(p["Literal"])
        else:
            return None
    pieces.append("".join(current))
    if len(pieces) == 1:
        whole = pieces[0]
        return lambda text: text == whole
    head, middle, tail = pieces[0], [m for m in pieces[1:-1] if m], pieces[-1]

    def match(text: str) -> bool:
        end = len(text) - len(tail)
        if end < len(head) or not text.startswith(head) or not text.endswith(tail):
            return False
        at = len(head)
        for piece in middle:
            found = text.find(piece, at, end)
            if found < 0:
                return False
            at = found + len(piece)
        return True

    return match


def _getter(path: tuple[str, ...]) -> Fn:
    if len(path) == 1:
        return (lambda u, r: u) if path[0] == "u" else (lambda u, r: r)
    get = operator.attrgetter(".".join(path[1:]))
    return (lambda u, r: get(u)) if path[0] == "u" else (lambda u, r: get(r))


class _Compiler:
    """Compiles the expressions of one policy for one action (so one resource type)."""

    def __init__(self, action: str) -> None:
        self.action = action
        self.resource_type = "Deployment" if action in compiler.DEPLOYMENT_ACTIONS else "Model"

    def expr(self, e: Any) -> E:
        if not isinstance(e, dict) or len(e) != 1:
            return _const(UNKNOWN)
        ((op, arg),) = e.items()
        if op == "Value":
            return _const(_literal(arg))
        if op == "Var":
            if arg == "principal":
                return E(lambda u, r: u, "entity:User", path=("u",))
            if arg == "resource":
                return E(lambda u, r: r, "entity:" + self.resource_type, path=("r",))
            if arg == "action":
                return _const(EntityRef("Action", self.action))
            return _const(UNKNOWN)  # context: this engine passes none
        if op == "Set" and isinstance(arg, list):
            return self.set_of([self.expr(x) for x in arg])
        if op == "Record" and isinstance(arg, dict):
            return self.record_of([(k, self.expr(x)) for k, x in arg.items()])
        if not isinstance(arg, dict):
            return _const(UNKNOWN)  # an extension function call (a list of arguments), or unknown
        if op in (".", "has") and isinstance(arg.get("attr"), str):
            return self.attribute(op, self.expr(arg.get("left")), arg["attr"])
        if op in ("!", "neg", "isEmpty"):
            return self.unary(op, self.expr(arg.get("arg")))
        if op in ("&&", "||"):
            return self.logic(op, self.expr(arg.get("left")), self.expr(arg.get("right")))
        if op == "if-then-else":
            return self.choose(self.expr(arg.get("if")), self.expr(arg.get("then")), self.expr(arg.get("else")))
        if op == "like":
            return self.like(self.expr(arg.get("left")), _pattern(arg.get("pattern") or [None]))
        if op == "is" and isinstance(arg.get("entity_type"), str):
            left = self.expr(arg.get("left"))
            within = self.expr(arg["in"]) if "in" in arg else None
            return self.is_type(left, arg["entity_type"], within)
        if op in _BINARY:
            return self.binary(op, self.expr(arg.get("left")), self.expr(arg.get("right")))
        return _const(UNKNOWN)

    # -- the forms ---------------------------------------------------------------------------

    @staticmethod
    def set_of(items: list[E]) -> E:
        if all(i.const is not _NONE for i in items):
            return _const(UNKNOWN if any(i.const is UNKNOWN for i in items) else tuple(i.const for i in items))
        fns = tuple(i.fn for i in items)

        def make_set(u: UserFacts, r: Resource) -> Any:
            out = tuple(f(u, r) for f in fns)
            return UNKNOWN if any(x is UNKNOWN for x in out) else out
        return E(make_set)

    @staticmethod
    def record_of(fields: list[tuple[str, E]]) -> E:
        if all(f.const is not _NONE for _, f in fields):
            values = {k: f.const for k, f in fields}
            return _const(UNKNOWN if any(v is UNKNOWN for v in values.values()) else values)
        fns = tuple((k, f.fn) for k, f in fields)

        def make_record(u: UserFacts, r: Resource) -> Any:
            out = {k: f(u, r) for k, f in fns}
            return UNKNOWN if any(x is UNKNOWN for x in out.values()) else out
        return E(make_record)

    @staticmethod
    def attribute(op: str, left: E, name: str) -> E:
        kind = left.kind or ""
        type_name = kind.split(":", 1)[1] if kind.startswith(("entity:", "record:")) else None
        if type_name in _SCHEMA and left.path is not None:  # statically known: cannot fail
            attrs = _SCHEMA[type_name]
            if op == "has":
                return _const(name in attrs)
            if name in attrs:
                path = (*left.path, name)
                return E(_getter(path), attrs[name], path=path)
            return _const(UNKNOWN)  # no such attribute: Cedar fails
        get = _attr if op == "." else _has
        fn = left.fn

        def attribute(u: UserFacts, r: Resource) -> Any:
            v = fn(u, r)
            return UNKNOWN if v is UNKNOWN else get(v, name)
        return E(attribute)

    @staticmethod
    def unary(op: str, inner: E) -> E:
        if inner.const is not _NONE:
            v = inner.const
            if op == "!":
                return _const(not v if type(v) is bool else UNKNOWN)
            if op == "neg":
                return _const(_checked(-v) if type(v) is int else UNKNOWN)
            return _const(len(v) == 0 if type(v) is tuple else UNKNOWN)
        f = inner.fn
        if op == "!" and inner.kind == "bool":
            return E(lambda u, r: not f(u, r), "bool")
        if op == "isEmpty" and inner.kind == "set:str":
            return E(lambda u, r: len(f(u, r)) == 0, "bool")
        if op == "!":
            return E(lambda u, r: (not v) if type(v := f(u, r)) is bool else UNKNOWN)
        if op == "neg":
            return E(lambda u, r: _checked(-v) if type(v := f(u, r)) is int else UNKNOWN)
        return E(lambda u, r: len(v) == 0 if type(v := f(u, r)) is tuple else UNKNOWN)

    @staticmethod
    def logic(op: str, left: E, right: E) -> E:
        stop = op == "||"  # the left value that decides without evaluating the right
        if left.const is not _NONE:
            if type(left.const) is not bool:
                return _const(UNKNOWN)
            if left.const is stop:
                return _const(stop)
            if right.kind == "bool" or right.const is not _NONE:
                return right if type(right.const) is bool or right.const is _NONE else _const(UNKNOWN)
        lf, rf = left.fn, right.fn
        if left.kind == "bool" and right.kind == "bool":
            if stop:
                return E(lambda u, r: lf(u, r) or rf(u, r), "bool")
            return E(lambda u, r: lf(u, r) and rf(u, r), "bool")

        def logic(u: UserFacts, r: Resource) -> Any:
            v = lf(u, r)
            if type(v) is not bool:
                return UNKNOWN  # it might fail: then so does the whole
            if v is stop:
                return v
            w = rf(u, r)
            return w if type(w) is bool else UNKNOWN
        return E(logic)

    @staticmethod
    def choose(cond: E, then: E, other: E) -> E:
        if type(cond.const) is bool:
            return then if cond.const else other
        cf, tf, of = cond.fn, then.fn, other.fn
        if cond.kind == "bool" and then.kind is not None and then.kind == other.kind:
            return E(lambda u, r: tf(u, r) if cf(u, r) else of(u, r), then.kind)

        def choose(u: UserFacts, r: Resource) -> Any:
            c = cf(u, r)
            if c is True:
                return tf(u, r)
            if c is False:
                return of(u, r)
            return UNKNOWN
        return E(choose)

    @staticmethod
    def like(inner: E, pattern: Callable[[str], bool] | None) -> E:
        if pattern is None:
            return _const(UNKNOWN)
        match, f = pattern, inner.fn
        if inner.kind == "str":
            return E(lambda u, r: match(f(u, r)), "bool")
        return E(lambda u, r: match(v) if type(v := f(u, r)) is str else UNKNOWN)

    def is_type(self, left: E, type_name: str, within: E | None) -> E:
        kind = left.kind or ""
        if kind.startswith("entity:"):
            if kind != "entity:" + type_name:
                return _const(False)
            return _const(True) if within is None else self.binary("in", left, within)
        f, wf = left.fn, (within.fn if within is not None else None)

        def is_type(u: UserFacts, r: Resource) -> Any:
            v = f(u, r)
            uid = None if v is UNKNOWN else _uid(v)
            if uid is None:
                return UNKNOWN
            if uid[0] != type_name:
                return False
            return True if wf is None else _in(uid, wf(u, r))
        return E(is_type)

    @staticmethod
    def binary(op: str, left: E, right: E) -> E:
        fn = _BINARY[op]
        if left.const is not _NONE and right.const is not _NONE:
            if left.const is UNKNOWN or right.const is UNKNOWN:
                return _const(UNKNOWN)
            return _const(fn(left.const, right.const))
        lk, rk, lf, rf = left.kind, right.kind, left.fn, right.fn
        if op == "==" or op == "!=":
            if lk in _PRIMITIVE and rk in _PRIMITIVE:
                if lk != rk:
                    return _const(op == "!=")  # different types are unequal
                if right.const is not _NONE:
                    c = right.const
                    return E((lambda u, r: lf(u, r) == c) if op == "==" else (lambda u, r: lf(u, r) != c), "bool")
                if left.const is not _NONE:
                    c = left.const
                    return E((lambda u, r: rf(u, r) == c) if op == "==" else (lambda u, r: rf(u, r) != c), "bool")
                return E((lambda u, r: lf(u, r) == rf(u, r)) if op == "==" else
                         (lambda u, r: lf(u, r) != rf(u, r)), "bool")
            if lk and rk and lk.startswith("entity:") and rk.startswith("entity:"):
                if lk != rk:
                    return _const(op == "!=")
                same = op == "=="
                return E(lambda u, r: (lf(u, r).id == rf(u, r).id) is same, "bool")
        if op in ("<", "<=", ">", ">=") and lk == "long" and rk == "long":
            cmp = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]
            if right.const is not _NONE:
                c = right.const
                return E(lambda u, r: cmp(lf(u, r), c), "bool")
            return E(lambda u, r: cmp(lf(u, r), rf(u, r)), "bool")
        if op == "contains":
            if lk == "set:str" and left.const is not _NONE and rk == "str":  # ["eu", "us"].contains(r.geography)
                members = frozenset(left.const)
                return E(lambda u, r: rf(u, r) in members, "bool")
            if lk == "set:str" and rk == "str":  # r.allowed_ranges.contains("x")
                return E(lambda u, r: rf(u, r) in lf(u, r), "bool")
        if op in ("containsAny", "containsAll") and lk == "set:str" and rk == "set:str":
            if op == "containsAny":
                return E(lambda u, r: not frozenset(lf(u, r)).isdisjoint(rf(u, r)), "bool")
            return E(lambda u, r: frozenset(lf(u, r)).issuperset(rf(u, r)), "bool")
        if op == "in" and lk and lk.startswith("entity:"):
            target = right.const
            if isinstance(target, EntityRef):
                if lk != "entity:" + target.type:
                    return _const(False)
                tid = target.id
                return E(lambda u, r: lf(u, r).id == tid, "bool")
            if type(target) is tuple and all(isinstance(t, EntityRef) for t in target):
                ids = frozenset(t.id for t in target if lk == "entity:" + t.type)
                return E(lambda u, r: lf(u, r).id in ids, "bool")

        def binary(u: UserFacts, r: Resource) -> Any:
            x = lf(u, r)
            if x is UNKNOWN:
                return UNKNOWN
            y = rf(u, r)
            return UNKNOWN if y is UNKNOWN else fn(x, y)
        return E(binary)

    def scope(self, var: str, scope: dict) -> E | None:
        """The scope constraint on `var` (None: it holds for every request)."""
        op = scope.get("op")
        if op == "All":
            return None
        target = {"Var": var}
        if op in ("==", "in") and "entity" in scope:
            return self.expr({op: {"left": target, "right": {"Value": {"__entity": scope["entity"]}}}})
        if op == "in" and "entities" in scope:
            return self.expr({"in": {"left": target, "right": {"Set": [{"Value": {"__entity": x}}
                                                                          for x in scope["entities"]]}}})
        if op == "is" and isinstance(scope.get("entity_type"), str):
            body: dict = {"left": target, "entity_type": scope["entity_type"]}
            if "in" in scope and "entity" in scope["in"]:
                body["in"] = {"Value": {"__entity": scope["in"]["entity"]}}
            elif "in" in scope:
                return _const(UNKNOWN)
            return self.expr({"is": body})
        return _const(UNKNOWN)  # a slot or a form not followed


@lru_cache(maxsize=8192)
def check_of(text: str, action: str) -> Check:
    """The check of a saved (already validated) policy for `action`: True / False where certain,
    else None. Cedar's order: the scope, then each condition (an `unless` negated), joined by &&."""
    est = compiler.est(text)
    c = _Compiler(action)
    parts: list[E] = []
    for var in ("principal", "action", "resource"):
        part = c.scope(var, est.get(var) or {"op": "All"})
        if part is not None:
            parts.append(part)
    for cond in est.get("conditions") or ():
        body = c.expr(cond.get("body"))
        if cond.get("kind") == "unless":
            body = c.unary("!", body)
        elif cond.get("kind") != "when":
            body = _const(UNKNOWN)
        parts.append(body)
    whole = _const(True)
    for part in parts:
        whole = c.logic("&&", whole, part)
    if type(whole.const) is bool:
        answer = whole.const
        return lambda u, r: answer
    if whole.kind == "bool":
        return whole.fn
    f = whole.fn

    def check(user: UserFacts, resource: Resource) -> bool | None:
        v = f(user, resource)
        return v if type(v) is bool else None
    return check
