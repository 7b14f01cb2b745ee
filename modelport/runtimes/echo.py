"""`echo`: a runtime with no model, for the gateway-overhead benchmark and fast tests.

It answers instantly (or after `delay_ms` per token, to test streaming, disconnects and
draining) with the words of the last message, one word per token. A word is a token for
counting too, so usage figures are exact and predictable. Embeddings are unit vectors derived
from a hash of the text: deterministic, meaningless, `dim` long.

Logprobs: every word is certain (logprob 0.0, itself its only alternative). A grammar is refused
(400): the echo cannot constrain what it repeats.

Options: `context_length` (default 2048), `delay_ms` (default 0), `dim` (default 8),
`cycle` (default true: with max_tokens larger than the text, keep repeating the words).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from modelport.runtimes.base import (
    TASK_CHAT,
    TASK_COMPLETION,
    TASK_EMBEDDINGS,
    Delta,
    EmbedResult,
    GenerateRequest,
    ModelSpec,
    Runtime,
    StopMatcher,
    TokenLogprob,
    Usage,
    check_prompt_fits,
    normalise_messages,
    refuse_unsupported,
)
from modelport.runtimes.tool_prompt import prepare


class EchoRuntime(Runtime):
    name = "echo"
    tasks = frozenset({TASK_CHAT, TASK_COMPLETION, TASK_EMBEDDINGS})

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        options = spec.options
        self._context_length = int(options.get("context_length", 2048))
        self._delay = float(options.get("delay_ms", 0)) / 1000.0
        self._dim = int(options.get("dim", 8))
        self._cycle = bool(options.get("cycle", True))

    @classmethod
    def load(cls, spec: ModelSpec) -> EchoRuntime:
        return cls(spec)

    @property
    def context_length(self) -> int:
        return self._context_length

    @staticmethod
    def _prompt_words(messages: Sequence[dict[str, Any]] | None, prompt: str | None,
                      tools: Sequence[dict[str, Any]] | None = None) -> tuple[int, list[str]]:
        if messages is not None:
            normalised = normalise_messages(prepare(messages, tools, None)[0])
            count = sum(len(m["role"].split()) + len(m["content"].split()) for m in normalised)
            return count, normalised[-1]["content"].split()
        words = (prompt or "").split()
        return len(words), words

    def count_tokens(self, *, messages: Sequence[dict[str, Any]] | None = None,
                     prompt: str | None = None, tools: Sequence[dict[str, Any]] | None = None) -> int:
        return self._prompt_words(messages, prompt, tools)[0]

    def generate(self, request: GenerateRequest, cancel: threading.Event) -> Iterator[Delta]:
        refuse_unsupported(request, self.name, logprobs=True)
        prompt_tokens, words = self._prompt_words(request.messages, request.prompt, request.tools)
        room = check_prompt_fits(prompt_tokens, self._context_length)
        words = words or ["echo"]
        if request.response_format == "json_object":
            words = [json.dumps({"echo": " ".join(words)})]
        cap = min(request.max_tokens or room, room)
        natural = len(words) if request.max_tokens is None or not self._cycle else None
        limit, finish = (natural, "stop") if natural is not None and natural <= cap else (cap, "length")
        stopper = StopMatcher(request.stop)
        scored: list[TokenLogprob] = []
        produced = 0
        hit = False
        while produced < limit:
            if (self._delay and cancel.wait(self._delay)) or cancel.is_set():
                yield Delta("", usage=Usage(prompt_tokens, produced))  # cancelled: what was generated
                return
            word = words[produced % len(words)]
            produced += 1
            self.tokens_generated_total += 1
            piece = word if produced == 1 else " " + word
            out, hit = stopper.feed(piece)
            if request.logprobs is not None:
                # one word is one token, and the echo is certain of it: probability 1
                raw = piece.encode("utf-8")
                scored.append(TokenLogprob(raw, 0.0, ((raw, 0.0),) if request.logprobs else ()))
                if out:
                    yield Delta(out, logprobs=tuple(scored), generated=produced)
                    scored = []
            elif out:
                yield Delta(out, generated=produced)
            if hit:
                finish = "stop"
                break
        tail = "" if hit else stopper.flush()
        # mypy is told to ignore the next line: finish is stop or length
        yield Delta(tail, finish_reason=finish, usage=Usage(prompt_tokens, produced),  # type: ignore[arg-type]
                    logprobs=tuple(scored) if request.logprobs is not None and not hit else None)

    def count_input_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        vectors = []
        for text in texts:
            digest = hashlib.sha256(text.encode("utf-8")).digest()
            raw = [(digest[i % len(digest)] - 127.5) for i in range(self._dim)]
            norm = math.sqrt(sum(v * v for v in raw)) or 1.0
            vectors.append([v / norm for v in raw])
        return EmbedResult(vectors, sum(self.count_input_tokens(texts)))
