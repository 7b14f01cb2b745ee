"""Checking a policy document before it is saved: Cedar syntax, forbid only, its id, the schema.

A document is one Cedar policy. It must be a `forbid` (an implicit permit underlies everything,
so a saved policy can only take away), carry no template slots, and type-check against the
schema in `schema.cedarschema`. Its `@id` annotation, when present, must equal the id it is
saved under; when absent it is added. Anything wrong is refused with Cedar's own diagnostic, and
nothing is half-applied: the caller saves only what `check_document` returned.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

import cedarpy

from modelport.errors import InvalidInput

POLICY_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_TEXT_BYTES = 16 * 1024
#: The literal segments under /api/v1/policies/ (GET .../schema, GET .../compliance, POST .../test):
#: a policy saved under one of these ids could not be shown or deleted there by its id.
RESERVED_IDS = frozenset({"compliance", "schema", "test"})
#: Cedar's parser recurses on brackets and overflows the native stack (killing the server) at a
#: few hundred levels; nothing a person writes needs more than a handful.
MAX_NESTING = 32

#: Every action of the schema, in the order the docs list them.
ACTIONS = ("deploy", "update_deployment", "change_content_filter", "import_model", "download_model",
           "create_finetune", "subscribe")
DEPLOYMENT_ACTIONS = frozenset({"deploy", "update_deployment", "change_content_filter"})
MODEL_ACTIONS = frozenset({"import_model", "download_model", "create_finetune", "subscribe"})


@cache
def schema_text() -> str:
    return resources.files("modelport.policies").joinpath("schema.cedarschema").read_text(encoding="utf-8")


@cache
def schema() -> cedarpy.Schema:
    return cedarpy.Schema.from_str(schema_text())


@dataclass(frozen=True)
class CheckedPolicy:
    """A policy that passed every check: its text (with its `@id`), whether it only audits, and
    the actions it can apply to (all of them unless its scope names some)."""

    id: str
    text: str
    audit: bool
    actions: frozenset[str]


def check_id(policy_id: str, saving: bool = True) -> None:
    """A valid id for a policy; `saving` False (deleting): a reserved id saved before it was
    reserved can still be removed."""
    if not POLICY_ID_RE.fullmatch(policy_id):
        raise InvalidInput("A policy id is 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter "
                           "or digit.", field="id")
    if saving and policy_id in RESERVED_IDS:
        raise InvalidInput(f"'{policy_id}' is reserved: {', '.join(sorted(RESERVED_IDS))} name routes under "
                           "/api/v1/policies/; choose another id.", field="id")
    if policy_id.startswith("modelport-"):
        raise InvalidInput("Ids starting with 'modelport-' are reserved (the implicit permit is one); choose "
                           "another.", field="id")


def nesting_depth(text: str) -> int:
    """The deepest nesting of (), [] and {} outside string literals and comments."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif ch == "/" and text.startswith("//", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
        elif ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
        i += 1
    return deepest


def check_document(policy_id: str, text: str) -> CheckedPolicy:
    """The policy `text` as it will be saved under `policy_id`, or InvalidInput saying what to fix."""
    try:
        return _check_document(policy_id, text)
    except RecursionError:
        # Chains of ||, && or + without brackets pass the bracket count but nest as deeply in
        # Cedar's JSON form; reading that form back recursed past Python's limit (was a 500).
        raise InvalidInput("The policy's expressions nest too deeply (a long chain of ||, && or +); use a set "
                           "(`principal.name in [\"a\", \"b\"]` style) or split it into several policies.",
                           field="cedar") from None


def _check_document(policy_id: str, text: str) -> CheckedPolicy:
    check_id(policy_id)
    if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
        raise InvalidInput(f"A policy is at most {MAX_TEXT_BYTES} bytes of Cedar; split it.", field="cedar")
    if nesting_depth(text) > MAX_NESTING:
        raise InvalidInput(f"The policy nests brackets more than {MAX_NESTING} levels deep; write it flatter.",
                           field="cedar")
    try:
        est = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        raise InvalidInput(f"The policy is not valid Cedar: {exc}", field="cedar") from exc
    if est.get("templates"):
        raise InvalidInput("Templates (?principal, ?resource) are not supported; name the values in the policy.",
                           field="cedar")
    statics = list((est.get("staticPolicies") or {}).values())
    if len(statics) != 1:
        raise InvalidInput(f"A policy document holds exactly one Cedar policy; this one holds {len(statics)}. "
                           "Save each under its own id.", field="cedar")
    policy = statics[0]
    if policy["effect"] != "forbid":
        raise InvalidInput("Only forbid policies can be saved: everything is permitted unless a policy forbids it, "
                           "so a policy can only take away. Write the rule as a forbid with the opposite condition.",
                           field="cedar")
    annotations = policy.get("annotations") or {}
    given = annotations.get("id")
    if given is not None and given != policy_id:
        raise InvalidInput(f"The policy's @id is '{given}' but it is saved as '{policy_id}'; make them equal or "
                           "leave @id out.", field="cedar")
    audit = "audit" in annotations
    if given is None:
        text = f'@id("{policy_id}")\n{text}'
    result = cedarpy.validate_policies(text, schema())
    if not result.validation_passed:
        problems = "; ".join(e.error for e in result.errors[:5])
        raise InvalidInput(f"The policy does not match the schema (modelport policies schema): {problems}",
                           field="cedar", details={"errors": [e.error for e in result.errors[:20]]})
    return CheckedPolicy(id=policy_id, text=text, audit=audit, actions=_actions(policy["action"]))


@lru_cache(maxsize=4096)
def est(text: str) -> dict:
    """A saved (already checked) policy in Cedar's JSON form (cached by text: cedarpy's conversion
    takes about a millisecond a policy)."""
    return next(iter(json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"].values()))


def actions_of(text: str) -> frozenset[str]:
    """The actions a saved (already checked) policy can match, without validating it again."""
    return _actions(est(text)["action"])


#: A path of attributes from `principal` or `resource`, e.g. ("resource", "model", "publisher").
Path = tuple[str, ...]


@lru_cache(maxsize=4096)
def reads_of(text: str) -> frozenset[Path] | None:
    """Every attribute path a saved policy can read, or None when it reads attributes in a way
    this does not follow (an attribute of an entity literal or of a conditional's result): then
    a decision must give it every attribute. A path to a record (`resource.content_filter`)
    stands for the whole record."""
    found: set[Path] = set()
    for cond in est(text).get("conditions") or ():
        if not _collect(cond["body"], found):
            return None
    return frozenset(found)


def _chain(expr: object) -> Path | None:
    """`principal.a.b` as ("principal", "a", "b"); None for anything but a variable's attributes."""
    if isinstance(expr, dict) and len(expr) == 1:
        ((op, arg),) = expr.items()
        if op == "Var" and isinstance(arg, str):
            return (arg,)
        if op == "." and isinstance(arg, dict) and isinstance(arg.get("attr"), str):
            left = _chain(arg.get("left"))
            return None if left is None else (*left, arg["attr"])
    return None


def _collect(expr: object, found: set[Path]) -> bool:
    """Add the attribute paths `expr` reads to `found`; False when one cannot be followed."""
    if isinstance(expr, list):
        return all(_collect(e, found) for e in expr)
    if not isinstance(expr, dict):
        return True
    ok = True
    for op, arg in expr.items():
        if op == "Value":  # a literal: reads nothing
            continue
        if op == "Record" and isinstance(arg, dict):  # keys are names, not expressions
            ok = _collect(list(arg.values()), found) and ok
        elif op in (".", "has") and isinstance(arg, dict) and isinstance(arg.get("attr"), str):
            left = _chain(arg.get("left"))
            if left is None or left[0] not in ("principal", "resource"):
                if left is None:
                    return False
                continue  # action and context carry no attributes here
            found.add((*left, arg["attr"]))
        else:
            ok = _collect(arg, found) and ok
    return ok


def _actions(scope: dict) -> frozenset[str]:
    """The actions a policy's action scope can match (validation already checked they exist)."""
    op = scope.get("op")
    if op == "==":
        return frozenset({scope["entity"]["id"]})
    if op == "in" and "entities" in scope:
        return frozenset(e["id"] for e in scope["entities"])
    if op == "in" and "entity" in scope:
        return frozenset({scope["entity"]["id"]})
    return frozenset(ACTIONS)
