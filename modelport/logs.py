"""Structured logging that cannot carry user content.

Every record is one JSON object. Only the message and an allow-list of extra fields reach
the output: request and response bodies, headers, query strings and keys are never passed to
a logger by our code, and unknown `extra` fields are dropped rather than printed, so a
careless call cannot leak a prompt through `extra=`.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import orjson

ALLOWED_EXTRA = frozenset(
    {
        "request_id", "method", "route", "status", "duration_ms", "workspace_id", "deployment_id",
        "model_id", "worker_id", "pid", "event", "count", "path", "error_code", "prompt_tokens",
        "completion_tokens", "region", "state", "exit_code", "url",
    }
)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, UTC timestamps ("Z"), orjson (the access log runs once per request)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in ALLOWED_EXTRA and key not in _STANDARD:
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The type and where it happened; exception messages may quote user input.
            etype = record.exc_info[0]
            out["exc_type"] = f"{etype.__module__}.{etype.__qualname__}"
        return orjson.dumps(out, default=str).decode()


def configure(level: str = "INFO", log_file: Path | None = None) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    formatter = JsonFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(formatter)
        root.addHandler(h)
    root.setLevel(level.upper())
    # uvicorn's access log prints raw paths and query strings; our middleware logs route templates.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
