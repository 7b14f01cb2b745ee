"""Readable tables by default, JSON with --json."""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


#: Bidirectional embeddings, overrides and isolates: they reorder what a terminal shows.
_BIDI = frozenset([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])


def terminal_safe(text: str) -> str:
    """Text from the server as a terminal may show it: control characters (escape sequences,
    carriage returns, backspaces, C1 codes) and bidirectional overrides removed, newlines and
    tabs kept. Publishers write cards and descriptions; they do not get to drive the terminal."""
    return "".join(ch for ch in text
                   if ch in "\n\t" or (unicodedata.category(ch) != "Cc" and ord(ch) not in _BIDI))


def markdown(text: str) -> None:
    """Print markdown (a model card) rendered as text, after `terminal_safe`."""
    from rich.markdown import Markdown  # here: its parser costs every other command 0.1 s at start

    console.print(Markdown(terminal_safe(text)))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


#: (header, a row's key or a function of the row) per column
Columns = Sequence[tuple[str, str | Callable[[dict], Any]]]


def table(rows: Sequence[dict], columns: Columns, title: str | None = None) -> None:
    t = Table(title=title, show_lines=False, header_style="bold")
    for header, _ in columns:
        t.add_column(header)
    for row in rows:
        t.add_row(*[_cell(getter(row) if callable(getter) else row.get(getter)) for _, getter in columns])
    console.print(t)


def kv(data: dict, keys: Columns, title: str | None = None) -> None:
    t = Table(title=title, show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    for label, getter in keys:
        t.add_row(label, _cell(getter(data) if callable(getter) else data.get(getter)))
    console.print(t)


def _cell(value: Any) -> str:
    """A value as a table cell: shown as typed (no rich markup), nothing that drives the terminal."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return escape(terminal_safe(", ".join(str(v) for v in value)))
    return escape(terminal_safe(str(value)))


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
