"""Assertions on what a user of the CLI sees."""

from __future__ import annotations

import json
import subprocess

from tests.support.server import Server


def cli_json(server: Server, *args: str, key: str | None = None) -> object:
    """Run a command with --json and parse what it printed (it must parse)."""
    r = server.cli(*args, "--json", key=key, check=True)
    return json.loads(r.stdout)


def assert_clean_error(r: subprocess.CompletedProcess, status: int | None, text: str) -> None:
    """A failed command: exit code 1, one `Error` line last on stderr, nothing on stdout, no traceback."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stdout == "", r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]  # upload progress may come first
    assert lines and lines[-1].startswith("Error") and sum(ln.startswith("Error") for ln in lines) == 1, r.stderr
    if status is not None:
        assert f"(HTTP {status})" in lines[-1], r.stderr
    assert text in lines[-1], r.stderr


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of a table as the CLI draws it, cell by cell."""
    headers: list[str] = []
    rows: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("┃"):
            headers = [c.strip() for c in line.strip("┃").split("┃")]
        elif line.startswith("│"):
            rows.append([c.strip() for c in line.strip("│").split("│")])
    return headers, rows
