"""Request models of the inference APIs (OpenAI-compatible and Azure AI Model Inference).

Fields follow the order of the official API references. Parameters the runtimes cannot honour
are rejected with a 400 that names them, instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Accepted for compatibility and ignored because they change nothing here.
IGNORED = frozenset({"user", "store", "metadata", "service_tier", "parallel_tool_calls", "stream_options"})
UNSUPPORTED = frozenset({"tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs",
                         "logit_bias", "audio", "modalities", "prediction", "suffix", "echo", "best_of",
                         "frequency_penalty", "presence_penalty"})


#: `name` is an identifier, as OpenAI documents it: it reaches the chat template, so it may carry
#: neither markup nor invisible characters (it is screened with its message's content, too)
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(default=None, pattern=NAME_PATTERN,
                             description="1-64 letters, digits, '_' or '-'.")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object"] = "text"


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, max_length=100, description="The deployment name.")
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=8)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(default=None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4 or any(not s or len(s) > 200 for s in stops):
            raise ValueError("stop takes up to 4 non-empty sequences of at most 200 characters")
        return stops


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32768)
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(description="One prompt (a list of one string is accepted).")


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str | list[str] = Field(description="A text or a list of texts.")
    model: str | None = Field(default=None, max_length=100)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)
    input_type: str | None = Field(default=None, description="Azure: text | query | document (accepted).")


def split_extra(body: dict[str, Any], model: type[BaseModel]) -> tuple[dict[str, Any], list[str]]:
    """(known fields, names of unknown or unsupported parameters)."""
    known = set(model.model_fields)
    keep = {k: v for k, v in body.items() if k in known}
    extra = [k for k in body if k not in known and k not in IGNORED]
    for k in UNSUPPORTED & set(body):
        if body[k] in (None, 0, 0.0, False, [], {}):  # a default value asks for nothing
            extra.remove(k)
    return keep, sorted(extra)
