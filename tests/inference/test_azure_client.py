"""The official `azure-ai-inference` client (1.0.0b9), unchanged, against the real bundled models.

One base URL per deployment (`{server}/deployments/{name}`); the client sends the key both as
`api-key` and as `Authorization: Bearer`. Errors reach the caller as `HttpResponseError`s with
the right status; the `extra-parameters` header decides what unknown parameters do.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from azure.ai.inference import ChatCompletionsClient, EmbeddingsClient
from azure.ai.inference.models import SystemMessage, UserMessage
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

from tests.support.inference import ModelServer

pytestmark = pytest.mark.chat_model  # the `models` server: SmolLM2 and MiniLM in workers

MESSAGES = [SystemMessage("You are terse."), UserMessage("Name a colour.")]


def chat_client(models: ModelServer, key: str, name: str = "chat") -> ChatCompletionsClient:
    return ChatCompletionsClient(endpoint=f"{models.url}/deployments/{name}", credential=AzureKeyCredential(key))


@pytest.fixture
def azure_chat(models: ModelServer) -> Iterator[ChatCompletionsClient]:
    with chat_client(models, models.chat_key) as c:
        yield c


def test_complete(azure_chat: ChatCompletionsClient):
    r = azure_chat.complete(messages=MESSAGES, max_tokens=5, seed=7)
    assert r.choices[0].message.content and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 5 and r.usage.prompt_tokens > 5
    assert r.model == "chat"


def test_complete_streaming_matches_non_streamed(azure_chat: ChatCompletionsClient):
    whole = azure_chat.complete(messages=MESSAGES, max_tokens=6, seed=11, temperature=1.0)
    updates = list(azure_chat.complete(messages=MESSAGES, max_tokens=6, seed=11, temperature=1.0, stream=True))
    text = "".join(u.choices[0].delta.content or "" for u in updates if u.choices)
    assert text == whole.choices[0].message.content
    assert [u.choices[0].finish_reason for u in updates if u.choices and u.choices[0].finish_reason] == [
        whole.choices[0].finish_reason]


def test_api_key_header_alone_is_enough(models: ModelServer):
    """Azure's own header, without the Bearer copy the SDK also sends."""
    with models.server.client("", headers={"api-key": models.chat_key}) as http:
        r = http.post("/deployments/chat/chat/completions?api-version=2024-05-01-preview",
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert r.status_code == 200, r.text


def test_embed(models: ModelServer):
    with EmbeddingsClient(endpoint=f"{models.url}/deployments/embed",
                          credential=AzureKeyCredential(models.embed_key)) as c:
        r = c.embed(input=["first text", "second text"])
    vectors = np.array([d.embedding for d in r.data], dtype=np.float32)
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert r.usage.prompt_tokens > 2


def test_get_model_info(models: ModelServer, azure_chat: ChatCompletionsClient):
    info = azure_chat.get_model_info()
    assert (info.model_name, info.model_type, info.model_provider_name) == (
        "SmolLM2-135M-Instruct", "chat-completion", "modelport")
    with EmbeddingsClient(endpoint=f"{models.url}/deployments/embed",
                          credential=AzureKeyCredential(models.embed_key)) as c:
        assert (c.get_model_info().model_name, c.get_model_info().model_type) == ("all-MiniLM-L6-v2", "embeddings")


def test_wrong_key_is_401(models: ModelServer):
    with chat_client(models, "mpd_" + "1" * 40) as c, pytest.raises(ClientAuthenticationError) as err:
        c.complete(messages=MESSAGES, max_tokens=1)
    assert err.value.status_code == 401


def test_unknown_deployment_is_404(models: ModelServer):
    with chat_client(models, models.admin_key, name="nope") as c, pytest.raises(ResourceNotFoundError) as err:
        c.complete(messages=MESSAGES, max_tokens=1)
    assert err.value.status_code == 404 and err.value.error.code == "DeploymentNotFound"
    # a deployment key only works on its own URL
    with chat_client(models, models.chat_key, name="embed") as c, pytest.raises(ResourceNotFoundError):
        c.get_model_info()


def test_unsupported_parameter_is_400(azure_chat: ChatCompletionsClient):
    with pytest.raises(HttpResponseError) as err:
        azure_chat.complete(messages=MESSAGES, max_tokens=1, frequency_penalty=1.0)
    assert err.value.status_code == 400 and "frequency_penalty" in err.value.message


def test_extra_parameters_error_is_the_default(azure_chat: ChatCompletionsClient):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "my_knob": 3}
    with pytest.raises(HttpResponseError) as err:
        azure_chat.complete(body=body)
    assert err.value.status_code == 400 and "my_knob" in err.value.message
    with pytest.raises(HttpResponseError) as err:
        azure_chat.complete(body=body, headers={"extra-parameters": "error"})
    assert err.value.status_code == 400


def test_extra_parameters_drop(azure_chat: ChatCompletionsClient):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "my_knob": 3}
    r = azure_chat.complete(body=body, headers={"extra-parameters": "drop"})
    assert r.usage.completion_tokens == 1


def test_extra_parameters_pass_through(azure_chat: ChatCompletionsClient):
    # model_extras makes the SDK send `extra-parameters: pass-through`
    r = azure_chat.complete(messages=MESSAGES, max_tokens=1, model_extras={"my_knob": 3})
    assert r.usage.completion_tokens == 1


def test_bad_extra_parameters_value_is_400(azure_chat: ChatCompletionsClient):
    with pytest.raises(HttpResponseError) as err:
        azure_chat.complete(messages=MESSAGES, max_tokens=1, headers={"extra-parameters": "keep"})
    assert err.value.status_code == 400
