"""The `modelport` command against a live server, and assertions on what its user sees.

`run_cli` runs the command in this process (typer's CliRunner against the real server over
HTTP): the same code from argument parsing to the printed table, without starting a Python
process per command. `run_installed_cli` runs the installed `modelport` entry point in a
subprocess, for the few tests that prove the installed command itself works.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from typer.testing import CliRunner

from modelport.cli.main import app

if TYPE_CHECKING:
    from tests.support.server import Server

#: Wide enough that no table the CLI draws wraps, so that `table` can read it cell by cell.
COLUMNS = "200"


@dataclass(frozen=True)
class CliResult:
    """What a user of the command sees: its exit code, stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str


def _cli_env(url: str, home: Path, key: str | None) -> dict[str, str | None]:
    # None removes a variable for the duration of the call; without a key the CLI reads the
    # server's admin.key from MODELPORT_HOME, as on an operator's machine.
    return {"MODELPORT_URL": url, "MODELPORT_HOME": str(home), "MODELPORT_API_KEY": key,
            "MODELPORT_WORKSPACE": None, "COLUMNS": COLUMNS, "NO_COLOR": "1"}


def run_cli(url: str, home: Path, *args: str, key: str | None = None, input: str | None = None) -> CliResult:
    """Run `modelport ARGS` in this process. An exception the CLI does not handle propagates and
    fails the test (a user would have seen a traceback)."""
    runner = CliRunner()
    r = runner.invoke(app, list(args), input=input, env=_cli_env(url, home, key), catch_exceptions=False)
    return CliResult(r.exit_code, r.stdout, r.stderr)


def run_installed_cli(url: str, home: Path, *args: str, key: str | None = None, input: str | None = None,
                      env: dict[str, str] | None = None) -> CliResult:
    """Run the installed `modelport` entry point (the script beside this interpreter) in a subprocess."""
    command = Path(sys.executable).parent / "modelport"
    full_env = {k: v for k, v in (env or {}).items()}
    full_env.update({k: v for k, v in _cli_env(url, home, key).items() if v is not None})
    r = subprocess.run([str(command), *args], env=full_env, capture_output=True, text=True, input=input, timeout=300)
    return CliResult(r.returncode, r.stdout, r.stderr)


def cli_json(server: Server, *args: str, key: str | None = None) -> object:
    """Run a command with --json and parse what it printed (it must parse)."""
    r = server.cli(*args, "--json", key=key, check=True)
    return json.loads(r.stdout)


def assert_clean_error(r: CliResult, status: int | None, text: str) -> None:
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
