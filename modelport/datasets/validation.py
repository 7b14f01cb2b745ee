"""Validation of fine-tuning data while it streams in: JSONL chat or prompt/completion.

Errors name the line and the field and say what is expected, never the offending value: the
content of a training file is private data (P1) and must not come back in a response or a
log line. At most `max_errors` problems are reported; the whole file is still read so that
its size limit and row count hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from modelport.errors import InvalidInput

Format = Literal["chat", "prompt_completion"]
ROLES = ("system", "user", "assistant")
MAX_LINE_BYTES = 8 * 1024 * 1024


@dataclass
class LineError:
    line: int
    field: str
    problem: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.problem}"


@dataclass
class Validator:
    """Feed raw chunks; it splits lines, checks each record and counts rows."""

    format: Format | None = None
    max_errors: int = 10
    rows: int = 0
    errors: list[LineError] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)
    _line_no: int = 0

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            nl = self._buffer.find(b"\n")
            if nl < 0:
                if len(self._buffer) > MAX_LINE_BYTES:
                    self._error(self._line_no + 1, "line", f"longer than {MAX_LINE_BYTES} bytes")
                    self._buffer.clear()
                return
            line = bytes(self._buffer[:nl])
            del self._buffer[: nl + 1]
            self._check_line(line)

    def finish(self) -> None:
        if self._buffer:
            self._check_line(bytes(self._buffer))
            self._buffer.clear()
        if self.rows == 0 and not self.errors:
            self.errors.append(LineError(0, "file", "contains no records; expected one JSON object per line"))
        if self.errors:
            listed = "; ".join(str(e) for e in self.errors[: self.max_errors])
            raise InvalidInput(
                f"The dataset was rejected and nothing was stored. {listed}",
                field="file",
                details={"errors": [e.__dict__ for e in self.errors[: self.max_errors]]},
            )

    def _error(self, line: int, where: str, problem: str) -> None:
        if len(self.errors) < self.max_errors:
            self.errors.append(LineError(line, where, problem))

    def _check_line(self, raw: bytes) -> None:
        self._line_no += 1
        n = self._line_no
        if not raw.strip():
            return
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._error(n, "line", "is not valid JSON")
            return
        if not isinstance(record, dict):
            self._error(n, "line", "must be a JSON object")
            return
        fmt = self.format or ("chat" if "messages" in record else "prompt_completion")
        if self.format is None:
            self.format = fmt
        before = len(self.errors)
        if fmt == "chat":
            self._check_chat(n, record)
        else:
            self._check_prompt_completion(n, record)
        if len(self.errors) == before:
            self.rows += 1

    def _check_chat(self, n: int, record: dict[str, Any]) -> None:
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            self._error(n, "messages", "must be a non-empty list of {role, content} objects")
            return
        has_assistant = False
        for i, m in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                self._error(n, where, "must be an object with role and content")
                return
            if m.get("role") not in ROLES:
                self._error(n, f"{where}.role", f"must be one of {', '.join(ROLES)}")
                return
            if not isinstance(m.get("content"), str) or not m["content"]:
                self._error(n, f"{where}.content", "must be a non-empty string")
                return
            has_assistant |= m["role"] == "assistant"
        if not has_assistant:
            self._error(n, "messages", "needs at least one assistant message (what the model should learn)")

    def _check_prompt_completion(self, n: int, record: dict[str, Any]) -> None:
        for key in ("prompt", "completion"):
            if not isinstance(record.get(key), str) or not record[key]:
                self._error(n, key, "must be a non-empty string (records are {prompt, completion} or {messages})")
                return


def validating(chunks: Iterator[bytes], validator: Validator) -> Iterator[bytes]:
    """Pass chunks through unchanged while the validator checks them; raises at the end."""
    for chunk in chunks:
        validator.feed(chunk)
        yield chunk
    validator.finish()
