"""The wire between the gateway and a worker: HTTP/1.1 over the worker's Unix socket.

    GET  /health     -> Health
    POST /tokenize   TokenizeBody -> TokenCount           (before inference: 400 if too long)
    POST /generate   GenerateBody -> NDJSON stream of events, one JSON object per line:
                     {"type": "delta",  "index": i, "text": "...", "logprobs": [...],
                      "generated": g}
                     (logprobs only when asked: OpenAI's per-token objects, token, logprob,
                     bytes, top_logprobs, for the tokens whose text this delta carries;
                     generated, when the runtime counts: tokens generated for choice i so
                     far, this delta's included, so a crash bills what was last reported)
                     {"type": "finish", "index": i, "finish_reason": "stop"|"length",
                      "completion_tokens": n}
                     {"type": "usage",  "prompt_tokens": p, "completion_tokens": c}  (last line)
                     {"type": "error",  "code": ..., "message": ...}                 (last line)
                     A stream that ends without a usage or error line was cut (worker died).
    POST /cancel     CancelBody -> Generated: stop the generation whose GenerateBody had this
                     `id` (if it still runs), wait until it has stopped, and answer the
                     completion tokens it generated, held-back ones included (the gateway bills
                     a cut stream with it). A generation that ended in the last CANCEL_MEMORY
                     generations is answered from memory (counts only); an unknown id is 404.
    POST /embed      EmbedBody -> EmbedResponse
    Errors before a stream starts: HTTP status of the ModelportError with
    {"error": {"code": ..., "message": ..., "field": ...}}.

Also here: `WorkerSpec`, what the supervisor hands to a new worker over an inherited pipe
(never argv or the environment). This module imports nothing from runtimes or torch.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelport import errors

PROTOCOL_VERSION = 1


class WorkerSpec(BaseModel):
    """What one worker loads and how. The model comes as a path the worker's user can read,
    or as an inherited file descriptor (a memfd holding plaintext weights, P11): the
    supervisor passes the fd to the child and the worker opens `/proc/self/fd/N`."""

    model_config = ConfigDict(extra="forbid")

    runtime: str = Field(description="Runtime name (entry point) or `module:Class`.")
    model_id: str = Field(description="Label for health and logs (a deployment or model id; no secrets).")
    model_path: str | None = None
    model_fd: int | None = Field(default=None, ge=0)
    lora_path: str | None = None
    lora_fd: int | None = Field(default=None, ge=0)
    n_ctx: int | None = Field(default=None, ge=16)
    threads: int | None = Field(default=None, ge=1, le=256)
    options: dict[str, Any] = Field(default_factory=dict)
    drain_seconds: float = Field(default=10.0, ge=0, description="SIGTERM: time in-flight requests get.")
    max_queue: int = Field(default=64, ge=1, description="Requests waiting for the model before 429.")
    allow_egress: bool = Field(default=False, description="Operator allows network access (P7 off).")

    @model_validator(mode="after")
    def _one_model_source(self) -> WorkerSpec:
        # Neither is allowed (the echo runtime has no model); a runtime that needs one says so.
        if self.model_path is not None and self.model_fd is not None:
            raise ValueError("give at most one of model_path and model_fd")
        if self.lora_path is not None and self.lora_fd is not None:
            raise ValueError("give at most one of lora_path and lora_fd")
        return self


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateBody(_Body):
    """One chat or text completion. Choice i of `n` uses seed + i, so a request with a seed is
    reproducible and its choices still differ; a batching runtime decodes the choices together
    (their events interleave, each with its index), others one after the other.
    `grammar` (GBNF text) and `logprobs` (top-k count) mean what runtimes/base.py says."""

    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list, max_length=4)
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)
    response_format: Literal["text", "json_object"] = "text"
    grammar: str | None = Field(default=None, min_length=1, max_length=1 << 20,
                                description="GBNF the answer must match.")
    logprobs: int | None = Field(default=None, ge=0, le=20, description="Top alternatives per token.")
    tools: list[dict[str, Any]] | None = None
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
                           description="The gateway's id for this generation, to name it in /cancel.")

    @model_validator(mode="after")
    def _one_input(self) -> GenerateBody:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages and prompt")
        if self.grammar is not None and self.response_format == "json_object":
            raise ValueError("give either a grammar or response_format json_object, not both")
        return self


#: how many ended generations a worker remembers the counts of, for a late /cancel
CANCEL_MEMORY = 4096


class CancelBody(_Body):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")


class Generated(BaseModel):
    completion_tokens: int = Field(description="Tokens the generation produced, over all its choices.")


class TokenizeBody(_Body):
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    tools: list[dict[str, Any]] | None = None
    input: list[str] | None = Field(default=None, description="Embeddings inputs, counted one by one.")


class TokenCount(BaseModel):
    count: int = Field(description="Prompt tokens (sum over `input` for embeddings).")
    counts: list[int] | None = Field(default=None, description="Per input, for embeddings.")
    context_length: int


class EmbedBody(_Body):
    input: list[str] = Field(min_length=1, max_length=2048)


class EmbedResponse(BaseModel):
    data: list[list[float]]
    prompt_tokens: int


class Health(BaseModel):
    status: Literal["ready", "draining"]
    protocol: int = PROTOCOL_VERSION
    pid: int
    uid: int
    model_id: str
    runtime: str
    tasks: list[str]
    context_length: int
    active_generations: int
    queued: int
    tokens_generated_total: int
    requests_total: int
    netns_inode: int = Field(description="Inode of the worker's network namespace (the supervisor "
                                         "compares it with its own).")
    counters: dict[str, int] = Field(default_factory=dict, description=(
        "Engine counters: batching (sequences_active, max_batch_sequences, batch_steps, kv_cells_used, "
        "preemptions, prefill_first_steps: steps that held running streams back for waiting prompts), "
        "isolation (cached_prompt_tokens and kv_leftover_on_join stay 0; shared_prompt_tokens "
        "counts prompt tokens copied between the choices of one request), time (decode_us inside llama_decode, "
        "step_us in whole batch steps), embeddings batching."))


# -- events (hand-built dicts: this is the per-token path) ---------------------------------

def _token(raw: bytes, logprob: float) -> dict[str, Any]:
    return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}


def logprobs_wire(scored: Any) -> list[dict[str, Any]]:
    """Runtime TokenLogprobs as OpenAI's per-token logprob objects."""
    return [{**_token(t.token, t.logprob), "top_logprobs": [_token(b, lp) for b, lp in t.top]} for t in scored]


def encode_event(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event) + b"\n"


def error_body(exc: errors.ModelportError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message, "field": exc.field}}


def _all_subclasses(cls: type[errors.ModelportError]) -> list[type[errors.ModelportError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


_BY_CODE: dict[str, type[errors.ModelportError]] = {c.code: c for c in _all_subclasses(errors.ModelportError)
                                                     if c.__module__ == errors.__name__}


def error_from_wire(code: str, message: str, field: str | None = None) -> errors.ModelportError:
    """Rebuild, on the gateway side, the exception the worker raised."""
    cls = _BY_CODE.get(code, errors.ServiceUnavailable)
    if cls is errors.TooManyRequests:
        return errors.TooManyRequests(message, field=field)
    return cls(message, field=field)
