"""Bad input on every write route: one JSON error shape naming the field, the value never echoed.

The JSON bodies are mutated from the route's own schema in the OpenAPI document: for every field
(nested ones too) a wrong type, a missing required field, an oversized string and an extra
field, each on its own in an otherwise valid body, so the error must name exactly that field.
`VALID` holds one valid body per JSON write route with every field set; a route or a field
without an entry fails the first tests, so new input cannot escape. Routes without a JSON body
get hand-written cases (path traversal, sizes that do not match, unknown ids).

Each bad value carries a canary; it must appear neither in the response nor in the server's
logs (its stdout/stderr capture and its log file). The bodies are never sent unmutated.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.server import Server, lean_server
from tests.support.tenants import begin_upload, ok, tiny_gguf, write_routes

CANARY = "cnry" + secrets.token_hex(12)
ERROR_KEYS = {"code", "message", "field", "details", "request_id"}

_POLICY = {"prompt_threshold": "medium", "completion_threshold": "high", "mode": "block"}
#: A content-filter configuration with every field set (nested ones too). Each category gets its
#: own copy of the policy: deepcopy keeps shared dicts shared, and a mutation must hit one field.
FILTER = {"enabled": True, **{c: dict(_POLICY) for c in ("hate", "sexual", "violence", "self_harm")},
          "jailbreak": {"enabled": True, "mode": "block"}, "profanity": {"enabled": False, "mode": "annotate"},
          "blocklists": ["ok-list"], "streaming": "buffered", "backend": "llm-judge", "judge_deployment": "judge"}

#: (url to call, a valid body with every field set) for each write route with a JSON body.
VALID: dict[tuple[str, str], tuple[str, dict]] = {
    ("POST", "/api/v1/publishers"): ("/api/v1/publishers", {"name": "ok-pub", "display_name": "Ok"}),
    ("PATCH", "/api/v1/publishers/{ref}"): ("/api/v1/publishers/HuggingFaceTB",
                                            {"name": "ok-pub-renamed", "display_name": "Ok"}),
    ("POST", "/api/v1/publishers/{ref}/users"): ("/api/v1/publishers/HuggingFaceTB/users", {"user": "admin"}),
    ("POST", "/api/v1/publishers/{ref}/apikeys"): ("/api/v1/publishers/HuggingFaceTB/apikeys",
                                                   {"user": "admin", "name": "k"}),
    ("POST", "/api/v1/marketplace/offers"): ("/api/v1/marketplace/offers", {
        "model": "SmolLM2-135M-Instruct", "model_version": "q4_1", "currency": "USD", "input_price": "0.1",
        "output_price": "0.2", "terms": {"version": "1", "text": "t"}, "contact_sharing_required": True,
        "deployment_types": ["serverless"]}),
    ("PATCH", "/api/v1/marketplace/offers/{offer}"): ("/api/v1/marketplace/offers/offer_none",
                                                      {"input_price": "0.1", "output_price": "0.2"}),
    ("POST", "/api/v1/marketplace/offers/{offer}/terms"): ("/api/v1/marketplace/offers/offer_none/terms",
                                                           {"version": "2", "text": "t"}),
    ("POST", "/api/v1/marketplace/subscriptions"): ("/api/v1/marketplace/subscriptions", {
        "offer": "offer_none", "contact": {"name": "n", "email": "n@example.org", "organization": "o"},
        "accept_terms_sha256": "0" * 64, "consent_to_share_contact": True}),
    ("PUT", "/api/v1/budgets/{currency}"): ("/api/v1/budgets/USD", {"amount": "10"}),
    ("POST", "/api/v1/workspaces"): ("/api/v1/workspaces", {"name": "ok-ws", "description": "d", "owner": "admin"}),
    ("POST", "/api/v1/workspaces/{ref}/members"): ("/api/v1/workspaces/default/members",
                                                   {"user": "admin", "role": "reader"}),
    ("POST", "/api/v1/members"): ("/api/v1/members", {"user": "admin", "role": "reader"}),
    ("PATCH", "/api/v1/members/{user}"): ("/api/v1/members/admin", {"role": "owner"}),
    ("POST", "/api/v1/users"): ("/api/v1/users", {"name": "ok-user", "email": "a@example.org",
                                                  "platform_admin": False}),
    ("PATCH", "/api/v1/users/{ref}"): ("/api/v1/users/admin", {"disabled": False}),
    ("POST", "/api/v1/apikeys"): ("/api/v1/apikeys", {"name": "k", "expires_in_days": 1, "user": "admin"}),
    ("POST", "/api/v1/users/{ref}/apikeys"): ("/api/v1/users/admin/apikeys",
                                              {"workspace": "default", "name": "k", "expires_in_days": 1}),
    ("PATCH", "/api/v1/models/{name}"): ("/api/v1/models/all-MiniLM-L6-v2", {
        "curated": True, "downloadable": True, "finetunable": False, "deprecated": False, "card": "c",
        "deployment_types": ["dedicated"]}),
    ("POST", "/api/v1/model-uploads"): ("/api/v1/model-uploads", {
        "name": "ok-model", "version": "1", "format": "gguf", "task": "chat-completion", "scope": "workspace",
        "publisher": "p", "license": "MIT", "license_url": "https://example.org/l", "card": "c",
        "downloadable": False, "finetunable": False, "deployment_types": ["dedicated"],
        "files": [{"path": "m.gguf", "size": 10}]}),
    ("POST", "/api/v1/deployments"): ("/api/v1/deployments", {
        "name": "ok-dep", "model": "SmolLM2-135M-Instruct", "model_version": "q4_1", "type": "serverless",
        "instances": 1, "geography": "local", "network": {"public_access": True, "allowed_ranges": ["10.0.0.0/8"]}}),
    ("PATCH", "/api/v1/deployments/{name}"): ("/api/v1/deployments/none", {
        "instances": 1, "network": {"public_access": True, "allowed_ranges": ["10.0.0.0/8"]},
        "rate_limits": {"requests_per_minute": 10, "tokens_per_minute": 1000},
        "rate_limit_caps": {"requests_per_minute": 10, "tokens_per_minute": 1000}}),
    ("POST", "/api/v1/deployments/{name}/keys"): ("/api/v1/deployments/none/keys", {"which": "primary"}),
    ("POST", "/api/v1/workspace-key/min-decryption-version"): ("/api/v1/workspace-key/min-decryption-version",
                                                              {"version": 1, "force": False}),
    ("POST", "/api/v1/platform-key/min-decryption-version"): ("/api/v1/platform-key/min-decryption-version",
                                                             {"version": 1, "force": False}),
    ("POST", "/api/v1/cmk"): ("/api/v1/cmk", {"provider": "local", "key_ref": "k"}),
    ("POST", "/api/v1/safety/analyze"): ("/api/v1/safety/analyze", {"text": "t", "config": FILTER}),
    ("PUT", "/api/v1/safety/blocklists/{name}"): ("/api/v1/safety/blocklists/ok-list",
                                                  {"terms": ["t"], "patterns": ["p+"]}),
    ("PUT", "/api/v1/deployments/{name}/content-filter"): ("/api/v1/deployments/none/content-filter", FILTER),
    ("POST", "/api/v1/finetuning/jobs"): ("/api/v1/finetuning/jobs", {
        "model": "SmolLM2-135M-Instruct", "dataset": "d", "validation_dataset": "v", "epochs": 1,
        "learning_rate_multiplier": 1.0, "batch_size": 1, "suffix": "ok", "seed": 0}),
    ("PUT", "/api/v1/policies/{policy_id}"): ("/api/v1/policies/ok-policy", {
        "cedar": 'forbid(principal, action == Action::"subscribe", resource) when { false };', "scope": "workspace"}),
    ("POST", "/api/v1/policies/test"): ("/api/v1/policies/test", {
        "action": "deploy", "model": "SmolLM2-135M-Instruct", "model_version": "q4_1", "as_user": "admin",
        "deployment": "none", "type": "serverless", "geography": "local", "instances": 1,
        "network": {"public_access": True, "allowed_ranges": ["10.0.0.0/8"]}, "content_filter": FILTER}),
}

#: Write routes that take no input at all (no body, no parameter): nothing to send them wrong.
#: The test checks in the OpenAPI document that they still take none.
NO_INPUT = {
    ("POST", "/api/v1/workspace-key/rotate"), ("POST", "/api/v1/workspace-key/rewrap"),
    ("DELETE", "/api/v1/cmk"), ("POST", "/api/v1/cmk/disable"), ("POST", "/api/v1/cmk/enable"),
    ("POST", "/api/v1/cmk/rotate"), ("POST", "/api/v1/platform-key/rotate"), ("POST", "/api/v1/platform-key/rewrap"),
}


@dataclass
class Mutation:
    name: str
    body: Any
    field: str  # the field the error must name
    container: str | None = None  # for a list item: a validator of the whole list may name the list


def _deref(spec: dict, schema: dict) -> dict:
    """Follow $ref and drop the `null` branch of optional fields."""
    while True:
        if "$ref" in schema:
            node: Any = spec
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
            continue
        branches = [b for b in schema.get("anyOf", []) if b.get("type") != "null"]
        if len(branches) == 1:
            schema = {**{k: v for k, v in schema.items() if k != "anyOf"}, **branches[0]}
            continue
        return schema


def _wrong_type(schema: dict) -> Any:
    t = schema.get("type")
    if t == "string" and not schema.get("enum") and "const" not in schema:
        return {"value": CANARY}
    return CANARY  # not an integer, boolean, array, object, nor one of the allowed values


def _set(body: Any, path: tuple, value: Any) -> Any:
    out = copy.deepcopy(body)
    node = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return out


def _delete(body: Any, path: tuple) -> Any:
    out = copy.deepcopy(body)
    node = out
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    return out


def mutations(spec: dict, schema: dict, root: Any, path: tuple = ()) -> Iterator[Mutation]:
    """Every single-fault variant of the valid body `root`, walking its schema alongside it."""
    schema = _deref(spec, schema)
    node = root
    for p in path:
        node = node[p]
    dotted = ".".join(str(p) for p in path)
    container = ".".join(str(p) for p in path[:-1]) if path and isinstance(path[-1], int) else None
    if path:
        yield Mutation(f"{dotted}: wrong type", _set(root, path, _wrong_type(schema)), dotted, container)
    t = schema.get("type")
    if t == "string" and path:
        limit = schema.get("maxLength", 1_000_000)
        yield Mutation(f"{dotted}: oversized", _set(root, path, CANARY + "x" * limit), dotted, container)
    if t == "object" and isinstance(node, dict):
        props = schema.get("properties", {})
        assert set(node) == set(props), f"VALID body at '{dotted or 'body'}' must set every field: {sorted(props)}"
        for name in schema.get("required", []):
            yield Mutation(f"{dotted or 'body'}: {name} missing", _delete(root, (*path, name)),
                           ".".join(str(p) for p in (*path, name)))
        # CONVENTIONS.md: control-plane request models use extra="forbid".
        assert schema.get("additionalProperties") is False, f"'{dotted or 'body'}' accepts unknown fields"
        extra = (*path, "unexpected_field")
        yield Mutation(f"{dotted or 'body'}: extra field", _set(root, extra, CANARY), ".".join(str(p) for p in extra))
        for name, sub in props.items():
            yield from mutations(spec, sub, root, (*path, name))
    if t == "array" and isinstance(node, list) and node:
        yield from mutations(spec, schema.get("items", {}), root, (*path, 0))


def body_mutations(spec: dict, route: tuple[str, str]) -> list[Mutation]:
    method, path = route
    schema = spec["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
    out = list(mutations(spec, schema, VALID[route][1]))
    out.append(Mutation("not JSON", None, "body"))
    out.append(Mutation("a JSON array", [CANARY], "body"))
    return out


def json_routes(spec: dict) -> set[tuple[str, str]]:
    return {r for r in write_routes(spec)
            if "application/json" in spec["paths"][r[1]][r[0].lower()].get("requestBody", {}).get("content", {})}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from lean_server(tmp_path_factory)


@pytest.fixture(scope="module")
def spec(server: Server) -> dict:
    with server.client() as c:
        return c.get("/openapi.json").json()


def assert_error(r: httpx.Response, status: int | tuple[int, ...], field: str | None) -> dict:
    """The one JSON error shape, naming `field`, with nothing of the canary in it."""
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    err = body["error"]
    assert err["request_id"] == r.headers["x-request-id"]
    assert err["message"] and err["code"]
    if field is not None:
        assert err["field"] == field, err
    assert CANARY not in r.text
    return err


def assert_logs_clean(server: Server) -> None:
    for text in (server.logs(), (server.home / "logs" / "server.log").read_text()):
        assert "request" in text  # the access log is there to be checked
        assert CANARY not in text


def test_every_json_write_route_has_a_valid_body(spec: dict) -> None:
    assert json_routes(spec) - set(VALID) == set(), "JSON write routes without a VALID body"
    assert set(VALID) - json_routes(spec) == set()


@pytest.mark.parametrize("route", list(VALID), ids=[f"{m} {p}" for m, p in VALID])
def test_malformed_json_bodies(server: Server, spec: dict, route: tuple[str, str]) -> None:
    url = VALID[route][0]
    cases = body_mutations(spec, route)
    assert len(cases) >= 4
    with server.client() as admin:
        for m in cases:
            if m.name == "not JSON":
                r = admin.request(route[0], url, content=b'{"name": "' + CANARY.encode(),
                                  headers={"Content-Type": "application/json"})
            else:
                r = admin.request(route[0], url, json=m.body)
            err = assert_error(r, 422, None)
            assert err["code"] == "invalid_input", m.name
            named = {err["field"]} | {f["field"] for f in err["details"]["fields"]}
            assert err["field"] in (m.field, m.container) and named <= {m.field, m.container}, (m.name, err)
    assert_logs_clean(server)


def test_a_missing_body_names_the_body(server: Server) -> None:
    with server.client() as admin:
        assert_error(admin.post("/api/v1/users"), 422, "body")


# Values that parse but that the services refuse: names, patterns, references, ranges.
SERVICE_CASES: list[tuple[str, str, dict, int, str]] = [
    ("PUT", "/api/v1/policies/ok-policy",
     {"cedar": f'permit(principal, action, resource) when {{ "{CANARY}" == "" }};'}, 400, "cedar"),
    ("PUT", "/api/v1/policies/ok-policy", {"cedar": f'forbid(principal, action == Action::"deploy", resource) '
                                                    f'when {{ resource.geography == "{CANARY}" }}; forbid(principal, '
                                                    'action, resource);'}, 400, "cedar"),
    ("POST", "/api/v1/policies/test", {"action": "deploy", "model": CANARY}, 404, "model"),
    ("POST", "/api/v1/policies/test", {"action": "deploy", "model": "SmolLM2-135M-Instruct", "as_user": CANARY},
     404, "as_user"),
    ("POST", "/api/v1/workspaces", {"name": f"Bad Name {CANARY}"}, 422, "name"),
    ("POST", "/api/v1/workspaces", {"name": "ok-ws2", "owner": CANARY}, 404, "owner"),
    ("POST", "/api/v1/users", {"name": f"-{CANARY}!"}, 422, "name"),
    ("POST", "/api/v1/members", {"user": CANARY, "role": "reader"}, 404, "user"),
    ("POST", "/api/v1/workspaces/default/members", {"user": CANARY, "role": "reader"}, 404, "user"),
    ("POST", "/api/v1/apikeys", {"user": CANARY}, 403, "user"),  # only one's own keys: nothing looked up
    ("POST", f"/api/v1/users/{CANARY}/apikeys", {"workspace": "default"}, 404, "user"),
    ("POST", "/api/v1/users/admin/apikeys", {"workspace": CANARY}, 403, "user"),
    ("POST", "/api/v1/apikeys", {"expires_in_days": 0}, 422, "expires_in_days"),
    ("POST", "/api/v1/apikeys", {"expires_in_days": 10**9}, 422, "expires_in_days"),
    ("PATCH", "/api/v1/models/all-MiniLM-L6-v2", {"deployment_types": []}, 400, "deployment_types"),
    ("POST", "/api/v1/model-uploads", {"name": f"bad name {CANARY}", "format": "gguf",
                                       "files": [{"path": "m.gguf", "size": 1}]}, 422, "name"),
    ("POST", "/api/v1/model-uploads", {"name": "m", "version": f"bad version {CANARY}", "format": "gguf",
                                       "files": [{"path": "m.gguf", "size": 1}]}, 422, "version"),
    ("POST", "/api/v1/model-uploads", {"name": "m", "license": f"not spdx {CANARY}", "format": "gguf",
                                       "files": [{"path": "m.gguf", "size": 1}]}, 422, "license"),
    ("POST", "/api/v1/model-uploads", {"name": "m", "format": "gguf",
                                       "files": [{"path": f"../{CANARY}", "size": 1}]}, 400, "files[0].path"),
    ("POST", "/api/v1/model-uploads", {"name": "m", "format": "gguf",
                                       "files": [{"path": f"/{CANARY}", "size": 1}]}, 400, "files[0].path"),
    ("POST", "/api/v1/model-uploads", {"name": "m", "format": "gguf",
                                       "files": [{"path": "a", "size": 1}, {"path": "./a", "size": 1}]},
     400, "files[1].path"),
    ("POST", "/api/v1/model-uploads", {"name": "m", "format": "gguf", "files": []}, 422, "files"),
    ("POST", "/api/v1/model-uploads", {"name": "m", "format": "gguf", "files": [{"path": "m", "size": -1}]},
     422, "files.0.size"),
    ("POST", "/api/v1/model-uploads", {"name": "m", "format": "gguf", "scope": "catalog",
                                       "files": [{"path": "m", "size": 1}]}, 400, "publisher"),
    ("POST", "/api/v1/model-uploads", {"name": "m", "format": "gguf", "files": [{"path": "m", "size": 2**62}]},
     413, None),
    ("POST", "/api/v1/deployments", {"name": f"Bad {CANARY}", "model": "SmolLM2-135M-Instruct"}, 422, "name"),
    ("POST", "/api/v1/deployments", {"name": "d1", "model": CANARY}, 404, "model"),
    ("POST", "/api/v1/deployments", {"name": "d1", "model": "SmolLM2-135M-Instruct", "geography": CANARY},
     400, "geography"),
    ("POST", "/api/v1/deployments", {"name": "d1", "model": "SmolLM2-135M-Instruct", "instances": 0}, 422,
     "instances"),
    ("POST", "/api/v1/deployments", {"name": "d1", "model": "SmolLM2-135M-Instruct", "type": "serverless",
                                     "instances": 2}, 400, "instances"),
    ("POST", "/api/v1/deployments", {"name": "d1", "model": "SmolLM2-135M-Instruct",
                                     "network": {"allowed_ranges": [CANARY]}}, 422, "network.allowed_ranges"),
    ("POST", "/api/v1/safety/analyze", {"text": "   "}, 400, "text"),
    ("PUT", "/api/v1/safety/blocklists/ok-list", {"patterns": [f"([{CANARY}"]}, 400, "patterns"),
    ("PUT", "/api/v1/safety/blocklists/-bad!", {"terms": [CANARY]}, 422, "path.name"),
    ("PUT", "/api/v1/deployments/none/content-filter", {"blocklists": ["no-such-list"]}, 400, "blocklists"),
    ("POST", "/api/v1/finetuning/jobs", {"model": CANARY, "dataset": "d"}, 404, "model"),
    ("POST", "/api/v1/publishers/HuggingFaceTB/users", {"user": CANARY}, 404, "user"),
    ("POST", "/api/v1/publishers/HuggingFaceTB/apikeys", {"user": CANARY}, 409, "user"),
    ("PATCH", "/api/v1/publishers/HuggingFaceTB", {"name": f"{CANARY}!"}, 422, "name"),
    ("PATCH", "/api/v1/publishers/HuggingFaceTB", {"name": "HuggingFaceTB", "display_name": CANARY * 20}, 422,
     "display_name"),
    ("PATCH", f"/api/v1/publishers/{CANARY}", {"display_name": "d"}, 404, None),
    ("POST", "/api/v1/marketplace/offers", {"model": CANARY, "currency": "USD", "input_price": "1",
                                            "output_price": "1", "terms": {"version": "1", "text": CANARY}},
     404, "model"),
    ("POST", "/api/v1/marketplace/offers", {"model": "SmolLM2-135M-Instruct", "currency": "usd", "input_price": "1",
                                            "output_price": "1", "terms": {"version": "1", "text": CANARY}},
     422, "currency"),
    ("POST", "/api/v1/marketplace/offers", {"model": "SmolLM2-135M-Instruct", "currency": "USD",
                                            "input_price": "-1", "output_price": "1",
                                            "terms": {"version": "1", "text": CANARY}}, 422, "input_price"),
    ("POST", "/api/v1/marketplace/subscriptions", {"offer": CANARY[:40], "contact": {"name": "n", "email": "n@e.org"},
                                                   "accept_terms_sha256": "0" * 64}, 404, "offer"),
    ("POST", "/api/v1/marketplace/subscriptions", {"offer": "o", "contact": {"name": "n", "email": CANARY},
                                                   "accept_terms_sha256": "0" * 64}, 422, "contact.email"),
    ("PUT", "/api/v1/budgets/USD", {"amount": f"1{CANARY}"}, 422, "amount"),
    ("PATCH", "/api/v1/marketplace/offers/offer_none", {}, 400, "input_price"),
    ("PATCH", "/api/v1/marketplace/offers/offer_none", {"output_price": "1"}, 404, None),
    ("PUT", "/api/v1/budgets/usd", {"amount": "1"}, 422, "path.currency"),
    ("POST", "/api/v1/finetuning/jobs", {"model": "all-MiniLM-L6-v2", "dataset": "d"}, 400, "model"),
    ("POST", "/api/v1/finetuning/jobs", {"model": "SmolLM2-135M-Instruct", "dataset": CANARY}, 404, "dataset"),
    ("POST", "/api/v1/finetuning/jobs", {"model": "SmolLM2-135M-Instruct", "dataset": "d", "suffix": f"-{CANARY}"},
     422, "suffix"),
    ("POST", "/api/v1/finetuning/jobs", {"model": "SmolLM2-135M-Instruct", "dataset": "d",
                                         "learning_rate_multiplier": 0}, 422, "learning_rate_multiplier"),
]


@pytest.mark.parametrize(("method", "url", "body", "status", "field"), SERVICE_CASES,
                         ids=[f"{c[0]} {c[1].replace(CANARY, '<canary>')} {c[4]}" for c in SERVICE_CASES])
def test_values_the_services_refuse(server: Server, method: str, url: str, body: dict, status: int,
                                    field: str | None) -> None:
    with server.client() as admin:
        assert_error(admin.request(method, url, json=body), status, field)
        # nothing was created by the refused request
        assert "ok-ws2" not in {w["name"] for w in admin.get("/api/v1/workspaces").json()}
        assert admin.get("/api/v1/deployments").json() == []
    assert_logs_clean(server)


def test_routes_without_a_json_body(server: Server, spec: dict, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Unknown ids, traversal, wrong sizes, commits of incomplete uploads: all in the one shape."""
    gguf = tiny_gguf(tmp_path)
    size = gguf.stat().st_size
    with server.client() as admin:
        up = begin_upload(admin, gguf, "bad-input-upload")
        files = f"/api/v1/model-uploads/{up['id']}/files"
        octet = {"Content-Type": "application/octet-stream"}
        filler = (CANARY.encode() * (size // len(CANARY) + 2))
        tried = {
            ("DELETE", "/api/v1/workspaces/{ref}"): [(admin.delete("/api/v1/workspaces/no-such-ws"), 404, None)],
            ("DELETE", "/api/v1/members/{user}"): [(admin.delete("/api/v1/members/no-such-user"), 404, "user")],
            ("DELETE", "/api/v1/apikeys/{key_id}"): [(admin.delete("/api/v1/apikeys/not-a-key"), 404, None)],
            ("DELETE", "/api/v1/publishers/{ref}"): [
                (admin.delete(f"/api/v1/publishers/{CANARY}"), 404, None),
                (admin.delete("/api/v1/publishers/HuggingFaceTB"), 409, None)],  # its bundled model refers to it
            ("DELETE", "/api/v1/publishers/{ref}/apikeys/{key_id}"): [
                (admin.delete(f"/api/v1/publishers/HuggingFaceTB/apikeys/{CANARY}"), 404, None),
                (admin.delete(f"/api/v1/publishers/{CANARY}/apikeys/pkey_x"), 404, None)],
            ("DELETE", "/api/v1/models/{name}"): [
                (admin.delete("/api/v1/models/all-MiniLM-L6-v2", params={"version": "no-such"}), 404, None)],
            ("POST", "/api/v1/models/{name}/deprecate"): [(admin.post("/api/v1/models/no-such/deprecate"), 404, None)],
            ("POST", "/api/v1/models/{name}/scan"): [(admin.post("/api/v1/models/no-such/scan"), 404, None)],
            ("PUT", "/api/v1/model-uploads/{upload_id}/files/{path}"): [
                (admin.put(f"{files}/%2e%2e/model.gguf", content=b"x", headers=octet), 400, "path"),
                (admin.put(f"{files}/other.gguf", content=b"x", headers=octet), 404, "path"),
                (admin.put(f"{files}/model.gguf", content=filler, headers=octet), 413, None),
                (admin.put(f"{files}/model.gguf", content=filler[: size - 1], headers=octet), 400, "size"),
            ],
            ("POST", "/api/v1/model-uploads/{upload_id}/commit"): [
                (admin.post(f"/api/v1/model-uploads/{up['id']}/commit"), 409, None)],
            ("DELETE", "/api/v1/model-uploads/{upload_id}"): [
                (admin.delete("/api/v1/model-uploads/upl_../../etc"), 404, None)],
            ("DELETE", "/api/v1/deployments/{name}"): [(admin.delete("/api/v1/deployments/no-such"), 404, None)],
            ("DELETE", "/api/v1/datasets/{ref}"): [(admin.delete("/api/v1/datasets/no-such"), 404, None)],
            ("DELETE", "/api/v1/safety/blocklists/{name}"): [
                (admin.delete("/api/v1/safety/blocklists/no-such"), 404, "name")],
            ("POST", "/api/v1/marketplace/offers/{offer}/retire"): [
                (admin.post("/api/v1/marketplace/offers/offer_none/retire"), 404, None)],
            ("POST", "/api/v1/marketplace/offers/{offer}/terms/{version}/retire"): [
                (admin.post("/api/v1/marketplace/offers/offer_none/terms/1/retire"), 404, None)],
            ("DELETE", "/api/v1/marketplace/subscriptions/{ref}"): [
                (admin.delete("/api/v1/marketplace/subscriptions/no-such"), 404, None)],
            ("POST", "/api/v1/finetuning/jobs/{job_id}/cancel"): [
                (admin.post("/api/v1/finetuning/jobs/ftjob_0000/cancel"), 404, None)],
            ("DELETE", "/api/v1/policies/{policy_id}"): [
                (admin.delete("/api/v1/policies/no-such"), 404, None),
                (admin.delete("/api/v1/policies/no-such", params={"scope": CANARY}), 422, "query.scope"),
                (admin.delete(f"/api/v1/policies/{CANARY}!"), 422, "path.policy_id")],
            ("POST", "/api/v1/policies/compliance/enforce"): [
                (admin.post("/api/v1/policies/compliance/enforce", params={"all_workspaces": CANARY}), 422,
                 "query.all_workspaces")],
            ("DELETE", "/api/v1/finetuning/models/{name}"): [
                (admin.delete("/api/v1/finetuning/models/no-such", params={"confirm": True}), 404, None),
                (admin.delete("/api/v1/finetuning/models/no-such", params={"confirm": CANARY}), 422, "query.confirm")],
            ("POST", "/api/v1/datasets"): [
                (admin.post("/api/v1/datasets", content=b"{}"), 422, "query.name"),
                (admin.post("/api/v1/datasets", params={"name": f"Bad {CANARY}"}, content=b"{}"), 422, "query.name"),
                (admin.post("/api/v1/datasets", params={"name": "ds", "format": CANARY}, content=b"{}"), 422,
                 "query.format"),
                (admin.post("/api/v1/datasets", params={"name": "ds"},
                            content=b'{"prompt": "' + CANARY.encode() + b'"}\n' + CANARY.encode() + b"\n"),
                 400, "file"),
                (admin.post("/api/v1/datasets", params={"name": "ds"}, content=b""), 400, "file"),
            ],
        }
        for responses in tried.values():
            for r, status, field in responses:
                assert_error(r, status, field)
        # The refused parts left nothing behind: the upload still expects its one file.
        assert ok(admin.get(f"/api/v1/model-uploads/{up['id']}")).json()["received"] == []
        assert not any(p.name.endswith(".part") for p in (server.model_files / "uploads").rglob("*"))
        assert admin.get("/api/v1/datasets").json() == []  # no refused dataset was stored
    covered = set(tried) | set(VALID) | NO_INPUT
    assert write_routes(spec) - covered == set(), "write routes without a bad-input case"
    for method, path in NO_INPUT:
        op = spec["paths"][path][method.lower()]
        params = {p["name"] for p in op.get("parameters", [])}
        assert "requestBody" not in op and params <= {"authorization", "x-modelport-workspace"}, (method, path)
    assert_logs_clean(server)
