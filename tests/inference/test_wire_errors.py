"""One mapping of our errors per inference API (inference/wire_errors.py): the same error gives
the same body on the HTTP answer and inside a stream, a blocked prompt the one content-filter
shape on both APIs, a 5xx nothing of its message, a 429 when to retry."""

from __future__ import annotations

import orjson
import pytest

from modelport.errors import InternalError, InvalidInput, ModelportError, NotFound, RateLimited, ServiceUnavailable
from modelport.inference.wire_errors import AZURE, OPENAI, ErrorShape
from modelport.safety.backends.base import CATEGORIES
from modelport.safety.screening import ContentFiltered, Verdict

SECRET = "a prompt the user typed"  # stands for anything a message must not carry out of a 5xx


def results() -> dict:
    return {c: {"filtered": c == "violence", "severity": "medium" if c == "violence" else "safe"} for c in CATEGORIES}


ERRORS: list[ModelportError] = [
    InvalidInput("Bad value.", field="temperature"),
    NotFound("No such deployment.", details={"openai_code": "model_not_found", "azure_code": "DeploymentNotFound"}),
    RateLimited("Slow down.", retry_after_ms=1500, headers={"x-ratelimit-remaining-requests": "0"}),
    ServiceUnavailable("No worker is available right now; retry shortly."),
    InternalError(f"worker died while reading {SECRET}"),
    ContentFiltered(Verdict(filtered=True, results=results(), filtered_reasons=("violence",))),
]


@pytest.mark.parametrize("shape", [OPENAI, AZURE], ids=["openai", "azure"])
@pytest.mark.parametrize("exc", ERRORS, ids=lambda e: type(e).__name__)
def test_the_answer_and_the_streamed_error_are_one_body(shape: ErrorShape, exc: ModelportError) -> None:
    response = shape.response(exc)
    assert orjson.loads(response.body) == shape.body(exc)
    assert SECRET.encode() not in response.body


def test_each_api_names_its_fields() -> None:
    exc = NotFound("No such deployment.",
                   details={"openai_code": "model_not_found", "azure_code": "DeploymentNotFound"})
    assert OPENAI.body(exc) == {"error": {"message": "No such deployment.", "type": "invalid_request_error",
                                          "param": None, "code": "model_not_found"}}
    assert AZURE.body(exc) == {"error": {"code": "DeploymentNotFound", "message": "No such deployment.",
                                         "status": 404, "param": None}}
    assert list(OPENAI.body(InvalidInput("x", field="n"))["error"]) == ["message", "type", "param", "code"]
    assert list(AZURE.body(InvalidInput("x", field="n"))["error"]) == ["code", "message", "status", "param"]


def test_a_blocked_prompt_is_one_shape_on_both_apis() -> None:
    exc = ContentFiltered(Verdict(filtered=True, results=results(), filtered_reasons=("violence",)))
    for shape in (OPENAI, AZURE):
        r = shape.response(exc)
        assert r.status_code == 400 and "retry-after" not in r.headers
        error = orjson.loads(r.body)["error"]
        assert (error["code"], error["param"], error["status"]) == ("content_filter", "prompt", 400)
        assert error["innererror"] == {"code": "ResponsibleAIPolicyViolation", "content_filter_result": results()}
    assert OPENAI.body(exc) == AZURE.body(exc)


def test_a_server_error_says_nothing_of_its_message_but_a_503_says_what_to_do() -> None:
    for shape in (OPENAI, AZURE):
        assert shape.body(InternalError(SECRET))["error"]["message"] == ("The server had an error while processing "
                                                                        "your request.")
        assert shape.response(InternalError(SECRET)).status_code == 500
        unavailable = ServiceUnavailable("No worker is available right now; retry shortly.")
        assert shape.body(unavailable)["error"]["message"] == unavailable.message
    assert OPENAI.body(InternalError(SECRET))["error"]["type"] == "server_error"


def test_a_rate_limit_says_when_to_retry_in_both_units() -> None:
    exc = RateLimited("Slow down.", retry_after_ms=1500, headers={"x-ratelimit-remaining-requests": "0"})
    for shape in (OPENAI, AZURE):
        r = shape.response(exc)
        assert r.status_code == 429
        assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("2", "1500")
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert OPENAI.body(exc)["error"]["type"] == "rate_limit_error"
