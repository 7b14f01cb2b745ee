"""Rewrite a test file's imports of the old shared test helpers to tests/support.

    .venv/bin/python tools/migrate_test_imports.py tests/identity/test_new.py [...]

For test files written before the helpers moved to tests/support (branches in flight when it
happened): `from tests.api.tenants import lean_server, ok` becomes `from tests.support.server
import lean_server` and `from tests.support.tenants import ok`, `wait_for(...)` from the old
inference helpers becomes `wait_until(...)`, and so on. Run ruff --fix afterwards to sort the
imports; tests/test_layout.py says whether anything is left. Once no branch needs it, delete it.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

SERVER = "tests.support.server"
#: old module -> {name: new module, or (new module, new name)}; "*" for every other name.
MOVES: dict[str, dict[str, str | tuple[str, str]]] = {
    "tests.conftest": {"*": SERVER},
    "tests.api.tenants": {"lean_server": SERVER, "free_port_url": SERVER, "ECHO_MODEL": SERVER,
                          "*": "tests.support.tenants"},
    "tests.cli.clitools": {"*": "tests.support.cli"},
    "tests.inference.helpers": {"wait_for": ("tests.support.waiting", "wait_until"), "start_lean": SERVER,
                                "lean_env": SERVER, "*": "tests.support.inference"},
    "tests.inference.conftest": {"*": "tests.support.inference"},
    "tests.kms.helpers": {"*": "tests.support.kms"},
    "tests.runtimes.models": {"*": "tests.support.models"},
    "tests.catalog.malicious": {"*": "tests.support.artifacts"},
    "tests.workers.conftest": {"*": "tests.support.workers"},
    "tests.safety.conftest": {"run": ("asyncio", "run")},
    "modelport.safety.model": {"*": "modelport.safety.classifier"},
    "modelport.safety.train": {"*": "tools.safety.train"},
    "modelport.safety.trainset": {"*": "tools.safety.trainset"},
    "modelport.safety.evaluate": {"*": "tools.safety.evaluate"},
    "modelport.keys.service": {"*": "modelport.encryption_keys.service"},
}


def rewrite(path: Path) -> bool:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []
    renames: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        if node.module == "tests" and [a.name for a in node.names] == ["pg"]:
            edits.append((node.lineno, node.end_lineno or node.lineno, "from tests.support import pg\n"))
            continue
        moves = MOVES.get(node.module)
        if moves is None:
            continue
        groups: dict[str, list[str]] = {}
        for alias in node.names:
            target = moves.get(alias.name, moves.get("*"))
            if target is None:
                raise SystemExit(f"{path}: nothing says where {node.module}.{alias.name} went")
            name = alias.name
            if isinstance(target, tuple):
                target, name = target
                if name != alias.name and not alias.asname:
                    renames[alias.name] = name
            groups.setdefault(target, []).append(name + (f" as {alias.asname}" if alias.asname else ""))
        indent = " " * node.col_offset
        text = "".join(f"{indent}from {module} import {', '.join(sorted(names))}\n" for module, names in groups.items())
        edits.append((node.lineno, node.end_lineno or node.lineno, text))
    if not edits:
        return False
    for start, end, text in sorted(edits, reverse=True):
        lines[start - 1:end] = [text]
    out = "".join(lines)
    for old, new in renames.items():  # calls only, and not attribute calls such as asyncio.wait_for(
        out = re.sub(rf"(?<![\w.]){old}\(", f"{new}(", out)
    path.write_text(out, encoding="utf-8")
    return True


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        if rewrite(Path(arg)):
            print(f"rewrote {arg}")
