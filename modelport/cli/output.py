"""Readable tables by default, JSON with --json."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table(
    rows: Sequence[dict], columns: Sequence[tuple[str, str | Callable[[dict], Any]]], title: str | None = None
) -> None:
    t = Table(title=title, show_lines=False, header_style="bold")
    for header, _ in columns:
        t.add_column(header)
    for row in rows:
        t.add_row(*[_cell(getter(row) if callable(getter) else row.get(getter)) for _, getter in columns])
    console.print(t)


def kv(data: dict, keys: Sequence[tuple[str, str | Callable[[dict], Any]]], title: str | None = None) -> None:
    t = Table(title=title, show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    for label, getter in keys:
        t.add_row(label, _cell(getter(data) if callable(getter) else data.get(getter)))
    console.print(t)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
