"""Shared CLI plumbing: the client from the root options, --json, clean error exits."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from modelport.cli.client import DEFAULT_URL, Client, CliError, resolve_key
from modelport.cli.output import err_console, terminal_safe

F = TypeVar("F", bound=Callable[..., Any])

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def client(ctx: typer.Context) -> Client:
    obj = ctx.find_root().obj or {}
    url = obj.get("url") or os.environ.get("MODELPORT_URL") or DEFAULT_URL
    return Client(url=url.rstrip("/"), key=resolve_key(obj.get("api_key")), workspace=obj.get("workspace"))


def handle_errors(fn: F) -> F:
    """Turn a CliError into one red line on stderr and exit code 1 (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CliError as exc:
            status = f" (HTTP {exc.status})" if exc.status else ""
            # The message is the server's text: shown as it is (a pattern's `[a-z]` is not markup), nothing
            # in it drives the terminal.
            err_console.print(f"[red]Error{status}:[/red] {escape(terminal_safe(exc.message))}", highlight=False,
                              markup=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature
