"""The one small interface every model runtime implements.

A runtime wraps one inference library (llama.cpp, transformers, ...) for one loaded model. It
lives inside a worker process (`modelport.workers`), never in the gateway, and is driven by one
thread at a time: the worker serialises calls, so a runtime needs no locking of its own. A
runtime whose `max_concurrent_generations` is above 1 (llamacpp: continuous batching) takes that
many `generate` calls from as many threads at once, and does its own locking.

Generate request fields beyond the OpenAI sampling parameters (`grammar`, `logprobs`,
`tools`) are described on `GenerateRequest`; `Delta.logprobs` holds TokenLogprob entries.

    Runtime.load(spec)            load the model named by `spec` (local files only)
    runtime.generate(req, cancel) iterator of Delta; the last one carries finish_reason + usage,
                                  or, when `cancel` stopped it, usage alone (what it generated)
    runtime.generate_choices(req, n, cancel)  (index, Delta) of n choices; one after the other
                                  by default, decoded together by a batching runtime
    runtime.max_concurrent_generations  how many `generate` calls may run at once (default 1)
    runtime.counters()            engine counters for the worker's health (batching, KV cache)
    runtime.embed(texts)          EmbedResult (one unit-length vector per text, token count)
    runtime.count_tokens(...)     prompt size before any inference (the gateway answers 400)
    runtime.context_length        the most tokens (prompt + completion) one sequence may hold
    runtime.close()               free the model

Privacy (P1): a runtime never logs, prints or puts into an exception message any prompt or
output text. Errors name what was wrong in our own words (sizes and limits are fine).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from modelport.errors import InvalidInput, Unprocessable

FinishReason = Literal["stop", "length"]
ResponseFormat = Literal["text", "json_object"]

MAX_TOP_LOGPROBS = 20

TASK_CHAT = "chat-completion"
TASK_COMPLETION = "completion"
TASK_EMBEDDINGS = "embeddings"


def default_threads() -> int:
    """Threads one worker uses by default: the CPUs this process may run on, at most 8.

    More threads than cores only adds contention (llama.cpp and torch both spin), and past 8
    the small bundled models stop scaling; operators set `threads` per deployment to split a
    machine between workers.
    """
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        available = os.cpu_count() or 1
    return max(1, min(8, available))


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a runtime needs to load a model. Paths are local; the worker turns an inherited
    file descriptor into `/proc/self/fd/N` before it gets here."""

    model_path: str
    lora_path: str | None = None
    n_ctx: int | None = None
    threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def thread_count(self) -> int:
        return self.threads or default_threads()



@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One completion. Exactly one of `messages` (chat, rendered with the model's own chat
    template) and `prompt` (raw text) is set. Defaults follow the OpenAI API."""

    messages: Sequence[dict[str, Any]] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    response_format: ResponseFormat = "text"
    #: GBNF text the answer must match (structured outputs, tool calls); a runtime that cannot
    #: apply a grammar refuses the request (400), it never ignores one
    grammar: str | None = None
    #: most likely alternatives (0..20) to report with each token's own logprob; None: no logprobs
    logprobs: int | None = None
    #: function tools (OpenAI's `{"type": "function", "function": {...}}`), shown to the model by
    #: its chat template where the template renders tools, otherwise by `tool_prompt`'s fallback
    tools: Sequence[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise InvalidInput("give either messages or a prompt", field="messages")
        if self.grammar is not None:
            if self.response_format == "json_object":
                raise InvalidInput("give either a grammar or response_format json_object, not both",
                                   field="grammar")
            if not self.grammar.strip():
                raise InvalidInput("grammar must be GBNF text with a `root` rule, not empty", field="grammar")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidInput(f"logprobs takes 0 to {MAX_TOP_LOGPROBS} alternatives", field="top_logprobs")


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token: its bytes, its log probability under the model (before sampling's
    temperature and top_p), and the `top` most likely tokens at that step as (bytes, logprob)."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of generated text. The last Delta of a generation has `finish_reason` and
    `usage` set (its text may be empty). A generation that `cancel` stopped ends with a Delta
    that has `usage` and no `finish_reason`: the tokens it generated until it stopped, those it
    held back (stop sequences, unfinished characters) included; metering bills a cut stream
    with it. A runtime that ends a cancelled generation without one is billed what its Deltas
    showed. `generated` (when the runtime counts) is the tokens generated for this choice so
    far, this Delta's own included: a Delta's text may stand for several tokens.
    `logprobs` (when asked for) holds the tokens whose text this delta releases, in order."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    generated: int | None = None

    @property
    def cancelled(self) -> bool:
        """The last Delta of a generation that `cancel` stopped."""
        return self.finish_reason is None and self.usage is not None


@dataclass(frozen=True, slots=True)
class EmbedResult:
    vectors: list[list[float]]
    prompt_tokens: int
    token_counts: list[int] | None = None  # per input, when the runtime knows them


class Runtime(ABC):
    """Base class of runtimes; see the module docstring for the contract."""

    name: ClassVar[str]
    tasks: ClassVar[frozenset[str]]

    def __init__(self) -> None:
        # Read by the worker's health endpoint; runtimes add one per decoded token so that a
        # test (or an operator) can see decoding stop when a client goes away.
        self.tokens_generated_total = 0

    @classmethod
    @abstractmethod
    def load(cls, spec: ModelSpec) -> Runtime:
        """Load the model; raise `Unprocessable` when the files are not a model we can run."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Most tokens one sequence may hold (prompt and completion together)."""

    @property
    def max_concurrent_generations(self) -> int:
        """How many `generate` calls may run at once; above 1 the runtime batches them."""
        return 1

    def counters(self) -> dict[str, int]:
        """Engine counters for the worker's health (batching, KV cache); none by default."""
        return {}

    @property
    def supported_tasks(self) -> frozenset[str]:
        """Tasks of this loaded model (a transformers model is either an encoder or a LM)."""
        return self.tasks

    def generate(self, request: GenerateRequest, cancel: threading.Event) -> Iterator[Delta]:
        raise InvalidInput("this model does not generate text; it is an embeddings model", field="model")

    def generate_choices(self, request: GenerateRequest, n: int,
                         cancel: threading.Event) -> Iterator[tuple[int, Delta]]:
        """`n` choices of one request as (choice index, Delta); choice i uses seed + i, so a
        request with a seed is reproducible and its choices still differ. Here one after the
        other; a batching runtime decodes them together and interleaves their Deltas."""
        for index in range(n):
            choice = request if index == 0 or request.seed is None else dataclasses.replace(
                request, seed=request.seed + index)
            for delta in self.generate(choice, cancel):
                yield index, delta
            if cancel.is_set():
                return

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        raise InvalidInput("this model does not produce embeddings; it is a text generation model",
                           field="model")

    @abstractmethod
    def count_tokens(self, *, messages: Sequence[dict[str, Any]] | None = None,
                     prompt: str | None = None, tools: Sequence[dict[str, Any]] | None = None) -> int:
        """Tokens the prompt occupies, exactly as `generate` would feed it to the model (with `tools`
        shown to it as `generate` shows them)."""

    def count_input_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each embeddings input, as `embed` would feed it to the model."""
        raise InvalidInput("this model does not produce embeddings; it is a text generation model",
                           field="model")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model. Default: nothing to free."""


def refuse_unsupported(request: GenerateRequest, runtime: str, *, grammar: bool = False,
                       logprobs: bool = False) -> None:
    """A runtime that cannot honour a grammar or logprobs says so (400); it never ignores them."""
    if request.grammar is not None and not grammar:
        raise InvalidInput(f"structured outputs and tool calls need a grammar, which the {runtime} runtime "
                           "cannot apply; use a GGUF (llama.cpp) deployment", field="response_format")
    if request.logprobs is not None and not logprobs:
        raise InvalidInput(f"the {runtime} runtime does not report logprobs; leave out 'logprobs'", field="logprobs")


def check_prompt_fits(prompt_tokens: int, context_length: int) -> int:
    """Raise InvalidInput when the prompt leaves no room to generate; return the room left."""
    room = context_length - prompt_tokens
    if room <= 0:
        raise InvalidInput(
            f"the prompt has {prompt_tokens} tokens, which fills the model's context window of "
            f"{context_length} tokens; shorten the messages",
            field="messages",
        )
    return room


def flatten_content(content: Any) -> str:
    """OpenAI messages may carry a list of content parts; text parts are joined, others refused."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise InvalidInput("only text content parts are supported by this model",
                                   field="messages")
        return "".join(parts)
    raise InvalidInput("message content must be a string or a list of text parts", field="messages")


def normalise_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: role and plain-string content."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidInput("each message needs a role", field="messages")
        item = dict(message)
        item["content"] = flatten_content(message.get("content"))
        out.append(item)
    if not out:
        raise InvalidInput("messages must not be empty", field="messages")
    return out


def render_chat(template: str, messages: Sequence[dict[str, Any]], *, bos_token: str,
                eos_token: str, tools: Sequence[dict[str, Any]] | None = None) -> str:
    """The model's chat template, rendered in the catalog's sandbox (the same renderer the
    artifact scan checked the template with). A template that refuses the conversation or
    fails on it is the caller's 400; a template that breaks a sandbox rule stays a 422."""
    from modelport.catalog.scanning.chat_template import render_chat_template  # jinja: lazy

    try:
        return render_chat_template(template, normalise_messages(messages), add_generation_prompt=True,
                                    bos_token=bos_token, eos_token=eos_token,
                                    tools=list(tools) if tools is not None else None)
    except Unprocessable as exc:
        if exc.details.get("reason") in ("refused", "render"):
            raise InvalidInput(f"{exc.message}; check the roles and order of the messages",
                               field="messages") from exc
        raise


class StopMatcher:
    """Holds back generated text that could be the start of a stop sequence.

    Text is released only once it can no longer be part of a stop sequence, so a stop sequence
    split across tokens is still caught and never streamed to the client (OpenAI semantics:
    the stop sequence itself is not returned).
    """

    __slots__ = ("_held", "_stops")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop sequence was hit)."""
        if not self._stops:
            return text, False
        held = self._held + text
        first = -1
        for stop in self._stops:
            index = held.find(stop)
            if index != -1 and (first == -1 or index < first):
                first = index
        if first != -1:
            self._held = ""
            return held[:first], True
        keep = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(held)), keep, -1):
                if held.endswith(stop[:length]):
                    keep = length
                    break
        self._held = held[len(held) - keep:] if keep else ""
        return held[: len(held) - keep], False

    def flush(self) -> str:
        """Text still held when generation ends for another reason than a stop sequence."""
        held, self._held = self._held, ""
        return held
