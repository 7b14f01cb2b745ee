"""Every command and group of `modelport` says what it does in its --help (no server needed)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from modelport.cli.main import app


def commands() -> Iterator[tuple[tuple[str, ...], object]]:
    def walk(command: object, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
        yield path, command
        if hasattr(command, "list_commands"):  # a group
            for name in command.list_commands(None):
                yield from walk(command.get_command(None, name), (*path, name))

    yield from walk(typer.main.get_command(app), ())


ALL = list(commands())


def test_the_tree_is_what_the_readme_describes() -> None:
    paths = {" ".join(p) for p, _ in ALL}
    assert len(ALL) > 60
    for expected in ("workspaces add-member", "apikeys create", "models show", "deployments regenerate-key",
                     "workspace-key retire", "safety blocklists put", "finetune delete-model"):
        assert expected in paths


@pytest.mark.parametrize(("path", "command"), ALL, ids=[" ".join(p) or "modelport" for p, _ in ALL])
def test_every_command_and_group_has_a_help_text(path: tuple[str, ...], command: object) -> None:
    text = (command.help or "").strip()  # type: ignore[attr-defined]
    assert text, f"`modelport {' '.join(path)}` has no help text: give it a docstring or help="
    first_line = text.splitlines()[0]
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert first_line.split()[0] in r.stdout
