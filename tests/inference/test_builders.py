"""The chunk writers' fast path (builders.TextTemplate) writes exactly what the typed chunk would:
for any text, on both writers, with and without usage, for every choice of a request."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelport.inference import tools
from modelport.inference.builders import ChatChunks, CompletionChunks, TextTemplate, sse
from modelport.inference.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    CompletionChunk,
    CompletionChunkChoice,
)


def typed_chat(index: int, text: str, include_usage: bool) -> bytes:
    chunk = ChatCompletionChunk(id="chatcmpl-1", object="chat.completion.chunk", created=7, model="dep",
                                choices=[ChatChunkChoice(index=index, delta=ChatDelta(content=text), logprobs=None,
                                                         finish_reason=None)])
    if include_usage:
        chunk["usage"] = None
    return sse(chunk)


def typed_completion(index: int, text: str, include_usage: bool) -> bytes:
    chunk = CompletionChunk(id="cmpl-1", object="text_completion", created=7, model="dep",
                            choices=[CompletionChunkChoice(index=index, text=text, logprobs=None, finish_reason=None)])
    if include_usage:
        chunk["usage"] = None
    return sse(chunk)


@given(texts=st.lists(st.text(max_size=30), min_size=1, max_size=5), include_usage=st.booleans(),
       index=st.integers(0, 7))
def test_a_text_piece_is_the_typed_chunk_byte_for_byte(texts: list[str], include_usage: bool, index: int) -> None:
    chat = ChatChunks("chatcmpl-1", 7, "dep", None, include_usage=include_usage, logprobs=False)
    completion = CompletionChunks("cmpl-1", 7, "dep", None, include_usage=include_usage, logprobs=False)
    for text in texts:
        assert chat.piece(index, tools.Content(text, None)) == typed_chat(index, text, include_usage)
        assert completion.piece(index, tools.Content(text, None)) == typed_completion(index, text, include_usage)
        assert orjson.loads(chat.piece(index, tools.Content(text, None))[6:])["choices"][0]["delta"] == {
            "content": text}


def test_a_template_holds_its_text_exactly_once() -> None:
    with pytest.raises(ValueError, match="once"):
        TextTemplate(b'data: {"a":"x"}\n\n')
