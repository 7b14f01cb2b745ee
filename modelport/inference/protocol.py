"""Wire models of the inference APIs (OpenAI-compatible and Azure AI Model Inference): the
requests, then the answers.

Request fields follow the order of the official API references. Parameters the runtimes cannot
honour are rejected with a 400 that names them, instead of being silently ignored.

Answers are TypedDicts, keys in the order they are sent (see the Answers section).
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Accepted for compatibility and ignored because they change nothing here.
IGNORED = frozenset({"user", "store", "metadata", "service_tier", "stream_options"})
UNSUPPORTED = frozenset({"functions", "function_call", "logit_bias", "audio", "modalities", "prediction", "suffix",
                         "echo", "best_of", "frequency_penalty", "presence_penalty"})
MAX_TOOLS = 128


#: `name` is an identifier, as OpenAI documents it: it reaches the chat template, so it may carry
#: neither markup nor invisible characters (it is screened with its message's content, too)
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=NAME_PATTERN)
    arguments: str = Field(max_length=1 << 20, description="The arguments as JSON text.")


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(default=None, pattern=NAME_PATTERN,
                             description="1-64 letters, digits, '_' or '-'.")
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=MAX_TOOLS,
                                              description="An assistant message's calls.")
    tool_call_id: str | None = Field(default=None, max_length=256, description="A tool message's call.")

    @model_validator(mode="after")
    def _tool_fields(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object (name, schema, strict)")
        return self


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

    @property
    def stops(self) -> list[str]:
        """`stop` as the list the validator made of it (empty without one)."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32768)
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(description="One prompt (a list of one string is accepted).")
    logprobs: int | None = Field(default=None, ge=0, le=20, description="Alternatives per token (0-20).")


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


class ResponsesRequest(BaseModel):
    """`POST /v1/responses`, the part that maps onto one stateless chat (nothing is stored, P1)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, max_length=100, description="The deployment name.")
    input: str | list[dict[str, Any]] = Field(description="A text, or a list of messages and function-call items.")
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    text: dict[str, Any] | None = Field(default=None, description="{'format': {'type': 'text' | 'json_object' | "
                                                                  "'json_schema', ...}}")
    stream: bool = False
    store: bool = Field(default=False, description="Must be false: modelport never stores a response.")
    previous_response_id: str | None = Field(default=None, description="Refused: nothing is stored to continue.")
    include: list[str] | None = None
    truncation: Literal["disabled"] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)


# -- Answers --------------------------------------------------------------------------------------
#
# Answers are TypedDicts: plain dicts at run time (built and dumped by orjson as cheaply as the dict
# literals they describe; pydantic models cost ~20 µs more per whole answer, measured with
# benchmarks/bench_wire_shapes.py), checked by mypy where they are built. Keys in the order they are
# sent. A `NotRequired` key is sent only when it was set (an absent key, not a null); every other
# key is always sent (None as null). tests/inference/test_wire_shapes.py holds the exact bytes.


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def usage_of(prompt_tokens: int, completion_tokens: int) -> Usage:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class ChatLogprobs(TypedDict):
    content: list[dict[str, Any]]  # per token: token, logprob, bytes, top_logprobs
    refusal: str | None


class CompletionLogprobs(TypedDict):
    """The legacy completions API's logprobs: one entry per token in each list."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float | None]]
    text_offset: list[int]


def completion_logprobs(tokens: list[dict[str, Any]], offset: int) -> CompletionLogprobs:
    """From the per-token objects; `offset`: where the first token starts in the choice's text."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t["token"])
    return CompletionLogprobs(tokens=[t["token"] for t in tokens], token_logprobs=[t["logprob"] for t in tokens],
                              top_logprobs=[{a["token"]: a["logprob"] for a in t["top_logprobs"]} for t in tokens],
                              text_offset=offsets)


class FunctionCallOut(TypedDict):
    name: str
    arguments: str


class ToolCallOut(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCallOut


class AssistantMessage(TypedDict):
    role: Literal["assistant"]
    content: str | None
    tool_calls: NotRequired[list[ToolCallOut]]


class ChatChoice(TypedDict):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None
    content_filter_results: NotRequired[dict[str, Any]]


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_filter_results: NotRequired[list[dict[str, Any]]]


class CompletionChoice(TypedDict):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None
    content_filter_results: NotRequired[dict[str, Any]]


class TextCompletion(TypedDict):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    prompt_filter_results: NotRequired[list[dict[str, Any]]]


class FunctionDelta(TypedDict):
    name: NotRequired[str]  # on a call's first delta
    arguments: str


class ToolCallDelta(TypedDict):
    index: int
    id: NotRequired[str]  # on a call's first delta, with its type
    type: NotRequired[Literal["function"]]
    function: FunctionDelta


class ChatDelta(TypedDict, total=False):
    role: Literal["assistant"]
    content: str
    tool_calls: list[ToolCallDelta]


class ChatChunkChoice(TypedDict):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: str | None
    content_filter_results: NotRequired[dict[str, Any]]


class ChatCompletionChunk(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: NotRequired[Usage | None]  # with stream_options.include_usage: null until the last chunk
    prompt_filter_results: NotRequired[list[dict[str, Any]]]  # the first chunk's, with a content filter


class CompletionChunkChoice(TypedDict):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None
    content_filter_results: NotRequired[dict[str, Any]]


class CompletionChunk(TypedDict):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: NotRequired[Usage | None]
    prompt_filter_results: NotRequired[list[dict[str, Any]]]


class Embedding(TypedDict):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32


class EmbeddingUsage(TypedDict):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(TypedDict):
    object: Literal["list"]
    model: str
    data: list[Embedding]
    usage: EmbeddingUsage
    prompt_filter_results: NotRequired[list[dict[str, Any]]]


class ModelCard(TypedDict):
    """One deployment in `GET /v1/models` (`id` is the deployment's name)."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    task: str
    state: str


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelCard]


class ModelInfo(TypedDict):
    """Azure's `GET /deployments/{name}/info`."""

    model_name: str
    model_type: str
    model_provider_name: str


# -- Answers of the Responses API -------------------------------------------------------------------


class ResponseUsage(TypedDict):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


def response_usage_of(input_tokens: int, output_tokens: int) -> ResponseUsage:
    return ResponseUsage(input_tokens=input_tokens, input_tokens_details={"cached_tokens": 0},
                         output_tokens=output_tokens, output_tokens_details={"reasoning_tokens": 0},
                         total_tokens=input_tokens + output_tokens)


class OutputText(TypedDict):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class OutputMessage(TypedDict):
    type: Literal["message"]
    id: str
    status: str  # in_progress | completed | incomplete
    role: Literal["assistant"]
    content: list[OutputText]


class FunctionCallItem(TypedDict):
    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


class ResponseObject(TypedDict):
    """`POST /v1/responses`'s answer (and the `response` of its stream's events); never stored."""

    id: str
    object: Literal["response"]
    created_at: int
    status: str  # in_progress | completed | incomplete
    error: dict[str, Any] | None
    incomplete_details: dict[str, str] | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputMessage | FunctionCallItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    temperature: float | None
    top_p: float | None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    truncation: str
    metadata: dict[str, str]
    usage: ResponseUsage | None
    completed_at: NotRequired[int]  # once completed
    prompt_filter_results: NotRequired[list[dict[str, Any]]]
    content_filter_results: NotRequired[dict[str, Any]]
