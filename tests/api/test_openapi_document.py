"""The OpenAPI document as a generated client reads it (api/openapi.py).

Every operation is in the table of what its service can answer, so a new route is documented
when it lands; every error it documents has its surface's error body; the key is a credential,
not a parameter; the name rules the services apply are patterns in the schemas. Whether the
statuses are true is checked against a live server by tests/api/test_schemathesis.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from modelport.api import openapi
from modelport.api.app import create_app
from modelport.config import build_settings

SURFACE_ERROR = {"control": "ErrorResponse", "openai": "OpenAIErrorResponse", "azure": "AzureErrorResponse"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    settings = build_settings({}, home=tmp_path_factory.mktemp("doc") / "home", load_bundled_models=False,
                              create_default_deployment=False)
    a = create_app(settings)
    try:
        yield a
    finally:
        a.state.services.db.dispose()


@pytest.fixture(scope="module")
def doc(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def surface(path: str) -> str:
    return "openai" if path.startswith("/v1/") else "azure" if path.startswith("/deployments/") else "control"


def test_every_route_is_in_the_table_and_the_table_names_only_routes(app: FastAPI) -> None:
    names = {r.name for r in openapi.api_routes(app.routes)}
    assert names - set(openapi.ANSWERS) == set(), "routes missing from api/openapi.py ANSWERS"
    assert set(openapi.ANSWERS) - names == set(), "ANSWERS names routes that do not exist"


def test_every_error_has_its_surfaces_error_body(doc: dict[str, Any]) -> None:
    for method, path, op in operations(doc):
        for status, response in op["responses"].items():
            if not status.startswith(("4", "5")) or (path == "/readyz" and status == "503"):
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{SURFACE_ERROR[surface(path)]}"}, (method, path, status)
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_authenticated_operations_declare_the_key_and_its_refusals(doc: dict[str, Any]) -> None:
    open_ops = {("GET", "/healthz"), ("GET", "/readyz")}
    for method, path, op in operations(doc):
        assert not any(p["in"] == "header" and p["name"].lower() == "authorization" for p in op.get("parameters", ()))
        if (method, path) in open_ops:
            assert "security" not in op and "401" not in op["responses"]
            continue
        assert op["security"][0] == {"bearer": []}, (method, path)
        assert "401" in op["responses"], (method, path)
    bearer = doc["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")


def test_statuses_follow_from_the_route(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    # a body: 413 past the limit, 422 when it does not validate
    assert {"401", "403", "404", "409", "413", "422"} <= set(paths["/api/v1/members"]["post"]["responses"])
    # no parameter that can fail and no body: no 422, and no 413
    listing = paths["/api/v1/datasets"]["get"]["responses"]
    assert "422" not in listing and "413" not in listing and "409" not in listing
    assert "422" not in paths["/api/v1/datasets/{ref}"]["get"]["responses"]
    # a bounded query parameter can fail
    assert "422" in paths["/api/v1/models"]["get"]["responses"]
    # a publisher-key route names no workspace: no 404 from the key alone
    assert set(paths["/api/v1/publisher/subscriptions"]["get"]["responses"]) >= {"401", "403", "404"}
    # 429 says when to come back
    assert "Retry-After" in paths["/api/v1/deployments"]["post"]["responses"]["429"]["headers"]
    # inference answers in its own shape, and never 422
    chat = paths["/v1/chat/completions"]["post"]
    assert {"400", "401", "403", "404", "413", "429", "503"} <= set(chat["responses"])
    assert "422" not in chat["responses"]
    assert paths["/deployments/{name}/info"]["get"]["security"] == [{"bearer": []}, {"azureApiKey": []}]


def _schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return doc["components"]["schemas"][name]


def test_names_carry_the_services_rule(doc: dict[str, Any]) -> None:
    for model in ("WorkspaceCreate", "UserCreate", "DeploymentCreate"):
        assert _schema(doc, model)["properties"]["name"]["pattern"] == "^[a-z0-9][a-z0-9._-]{0,62}$", model
    upload = _schema(doc, "UploadCreate")["properties"]
    assert {"name", "version", "license"} <= {k for k, v in upload.items() if "pattern" in v}
    dataset = next(p for p in doc["paths"]["/api/v1/datasets"]["post"]["parameters"] if p["name"] == "name")
    assert dataset["schema"]["pattern"] == "^[a-z0-9][a-z0-9._-]{0,62}$"


def test_inference_bodies_are_the_protocols_with_model_required_on_v1(doc: dict[str, Any]) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"):
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = _schema(doc, ref.rsplit("/", 1)[1])
        assert "model" in body["required"] and body["properties"]["model"]["minLength"] == 1, path
    chat = _schema(doc, "ChatCompletionRequest")
    assert "messages" in chat["required"] and chat["additionalProperties"] is False
    azure = doc["paths"]["/deployments/{name}/chat/completions"]["post"]["requestBody"]["content"]
    assert "model" not in _schema(doc, azure["application/json"]["schema"]["$ref"].rsplit("/", 1)[1])["required"]


def test_the_document_is_built_once(app: FastAPI, doc: dict[str, Any]) -> None:
    assert app.openapi() is doc


def test_a_name_the_schema_refuses_is_refused_by_the_service_too(tmp_path: Path) -> None:
    """The service keeps its own check (the CLI and the portal reach it without the schema), and
    it no longer takes a trailing newline, which Python's `$` lets through."""
    from modelport.errors import InvalidInput
    from modelport.identity.service import check_name

    assert check_name("team-1.a_b", "name") == "team-1.a_b"
    for bad in ("team\n", "Team", "-team", "", "a" * 64):
        with pytest.raises(InvalidInput):
            check_name(bad, "name")


def test_a_wrong_method_answers_405_naming_every_method_of_the_path(app: FastAPI) -> None:
    """Starlette named only the methods of the first route matching the path (GET on a path that
    also takes DELETE), so a client told `Allow: GET` would never find the DELETE."""
    from fastapi.testclient import TestClient

    client = TestClient(app)  # not entered: routing only, no lifespan
    for method in ("OPTIONS", "PUT"):
        r = client.request(method, "/api/v1/datasets/ds_x")
        assert r.status_code == 405
        assert r.headers["allow"] == "DELETE, GET"
        assert r.json()["error"]["code"] == "method_not_allowed"
    r = client.get("/v1/chat/completions")  # an inference path, outside the data plane's fast path
    assert r.status_code == 405 and r.headers["allow"] == "POST"
