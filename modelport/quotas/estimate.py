"""The tokens a request is charged at admission, before any worker has counted its prompt.

As Azure OpenAI does, tokens per minute are charged from an estimate of the most a request can
process: its prompt, estimated from its length (about four bytes of UTF-8 a token, plus a few
tokens of chat markup a message), and the completion it asks for (`max_tokens` times `n`). It is
not what is billed: billing counts the tokens the worker reports (the usage records).
"""

from __future__ import annotations

from collections.abc import Iterable

BYTES_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
#: A request without `max_tokens` may generate until the context is full; it is charged this much.
UNBOUNDED_COMPLETION = 1024


def text_tokens(text: str) -> int:
    return -(-len(text.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN)


def prompt_tokens(texts: Iterable[str], messages: int = 0) -> int:
    return sum(text_tokens(t) for t in texts) + TOKENS_PER_MESSAGE * messages


def completion_tokens(max_tokens: int | None, n: int = 1) -> int:
    return (max_tokens if max_tokens is not None else UNBOUNDED_COMPLETION) * max(1, n)
