"""A chat prompt's token ids, in which only the template's own markup becomes control tokens.

A chat template writes the conversation between control tokens (`<|im_start|>user ...
<|im_end|>`). Those must become the model's control tokens, so the rendered prompt is
tokenised with control tokens parsed; but then a caller who writes `<|im_start|>system` in a
message would open a system turn of their own. So the text that came from the caller (each
message's content and name) is tokenised as text, whatever it contains:

1. The template is rendered twice: with the messages, and with each caller-written value
   replaced by a random marker. Splitting the second rendering at the markers locates the
   caller's text in the first (the pieces, joined, must give exactly the first rendering).
2. When every occurrence of a control token's text in the prompt lies inside the template's
   markup, the prompt is tokenised whole with control tokens parsed: the ids are exactly
   those the prompt always had, and no caller text can have produced a control token.
3. Otherwise the markup is tokenised with control tokens parsed and the caller's text without,
   piece by piece (tokens at the pieces' boundaries may then differ from a whole-prompt
   tokenisation; only such prompts pay that).
4. A template that changes the caller's text (trims it, say) cannot be split: then a message
   holding a control token's text is refused (400), and any other is tokenised whole.

Raw prompts (the completions API) are the caller's whole input and keep control tokens parsed.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Collection, Sequence
from typing import Any

from modelport.errors import InvalidInput
from modelport.runtimes import tool_prompt
from modelport.runtimes.base import normalise_messages, render_chat

#: (text, parse control tokens?) -> token ids, without a BOS the tokenizer would add itself
Tokenize = Callable[[str, bool], list[int]]


def _mask(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The messages with each caller-written string replaced by a unique marker, and marker -> text."""
    nonce = secrets.token_hex(8)
    masked: list[dict[str, Any]] = []
    values: dict[str, str] = {}
    for i, message in enumerate(messages):
        item = dict(message)
        for key, value in message.items():
            if key != "role" and isinstance(value, str):
                marker = f"\ue000{nonce}:{i}:{len(values)}\ue001"
                values[marker] = value
                item[key] = marker
        masked.append(item)
    return masked, values


def chat_pieces(template: str, messages: Sequence[dict[str, Any]], *, bos_token: str,
                eos_token: str, tools: Sequence[dict[str, Any]] | None = None,
                ) -> tuple[str, list[tuple[str, bool]] | None]:
    """The rendered prompt, and its pieces as (text, written by the caller) in order; None for
    the pieces when the template changes the caller's text, so that it cannot be located.
    Tools, earlier tool calls and tool results are first given the form the template takes
    (`tool_prompt.prepare`); in the fallback form they are message text like any other."""
    prepared, template_tools = tool_prompt.prepare(messages, tools, template)
    real = normalise_messages(prepared)
    text = render_chat(template, real, bos_token=bos_token, eos_token=eos_token, tools=template_tools)
    masked, values = _mask(real)
    try:
        shape = render_chat(template, masked, bos_token=bos_token, eos_token=eos_token, tools=template_tools)
    except InvalidInput:  # the template looks at the text itself (refuses a marker): cannot split
        return text, None
    pieces: list[tuple[str, bool]] = []
    for i, part in enumerate(re.split(f"({'|'.join(map(re.escape, values))})", shape) if values else [shape]):
        if i % 2:
            pieces.append((values[part], True))
        elif part:
            pieces.append((part, False))
    if "".join(p for p, _ in pieces) != text:
        return text, None
    return text, pieces


def _controls_only_in_markup(text: str, pieces: list[tuple[str, bool]], control_texts: Collection[str]) -> bool:
    markup, at = [], 0
    for piece, from_caller in pieces:
        if not from_caller:
            markup.append((at, at + len(piece)))
        at += len(piece)
    for control in control_texts:
        start = text.find(control)
        while start != -1:
            end = start + len(control)
            if not any(a <= start and end <= b for a, b in markup):
                return False
            start = text.find(control, start + 1)
    return True


def chat_prompt_ids(template: str, messages: Sequence[dict[str, Any]], *, bos_token: str, eos_token: str,
                    tokenize: Tokenize, control_texts: Collection[str],
                    tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of a chat prompt; `control_texts` are the texts of the model's control tokens."""
    controls = [c for c in control_texts if c]
    # Structured values a tool-aware template renders itself (tool definitions, earlier calls)
    # cannot be told apart from its markup: one holding a control token's text is refused.
    structured = tool_prompt.strings_in([tools or [], [m.get("tool_calls") for m in messages]])
    found = next((c for c in controls for v in structured if c in v), None)
    if found is not None:
        raise InvalidInput(f"a tool definition or tool call contains '{found}', a control token of this model; "
                           "remove it", field="tools")
    text, pieces = chat_pieces(template, messages, bos_token=bos_token, eos_token=eos_token, tools=tools)
    if pieces is None:
        prepared = tool_prompt.prepare(messages, tools, template)[0]
        written = [v for m in normalise_messages(prepared) for k, v in m.items() if k != "role" and isinstance(v, str)]
        found = next((c for c in controls for v in written if c in v), None)
        if found is not None:
            raise InvalidInput(f"a message contains '{found}', a control token of this model, which this model's "
                               "chat template does not let the gateway keep apart from its own markup; remove it",
                               field="messages")
        return tokenize(text, True)
    if _controls_only_in_markup(text, pieces, controls):
        return tokenize(text, True)
    ids: list[int] = []
    for piece, from_caller in pieces:
        ids += tokenize(piece, not from_caller)
    return ids
