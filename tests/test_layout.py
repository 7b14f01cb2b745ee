"""The suite's own layout: helpers that tests share live in tests/support, and a test package
never imports another one's modules or any conftest (pytest loads conftests itself; importing one
runs its fixtures' module twice and ties tests to the order of collection)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "tests" or m.startswith("tests.")}


def allowed(module: str, package: str) -> bool:
    """tests.support and its modules anywhere; a package's own modules within that package."""
    if module in ("tests", "tests.support") or module.startswith("tests.support."):
        return True
    return bool(package) and (module == f"tests.{package}" or module.startswith(f"tests.{package}."))


def test_tests_share_helpers_only_through_tests_support() -> None:
    bad = []
    for path in sorted(TESTS.rglob("*.py")):
        rel = path.relative_to(TESTS)
        package = rel.parts[0] if len(rel.parts) > 1 else ""
        for module in sorted(imported_modules(path)):
            if module.endswith(".conftest") or module == "tests.conftest":
                bad.append(f"{rel}: imports {module} (move what it needs to tests/support)")
            elif not allowed(module, package):
                bad.append(f"{rel}: imports {module} from another test package (move it to tests/support)")
    assert not bad, "\n".join(bad)


def test_support_modules_import_nothing_from_test_packages() -> None:
    bad = [f"{p.relative_to(TESTS)}: imports {m}" for p in sorted((TESTS / "support").glob("*.py"))
           for m in sorted(imported_modules(p)) if not allowed(m, "support")]
    assert not bad, "\n".join(bad)


ROOT = TESTS.parent
#: What a reader of a clone cannot open: notes kept beside the repository, not in it.
OUTSIDE = ("DESIGN" + ".md", "../" + "shared", "/work" + "/")
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "build"}


def repository_text_files() -> list[Path]:
    found = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix in {".py", ".md", ".toml", ".txt", ".sh", ".cfg", ".ini", ".yml", ".yaml"} or \
                path.name in {"Makefile", "NOTICE", "LICENSE"}:
            found.append(path)
    return found


def test_no_file_points_at_files_outside_the_repository() -> None:
    """Code and docs say what they mean; they never send a reader to a file a clone does not have."""
    files = repository_text_files()
    assert any(p.name == "README.md" and p.parent == ROOT for p in files)
    bad = [f"{p.relative_to(ROOT)}: {needle}" for p in files
           for needle in OUTSIDE if needle in p.read_text(encoding="utf-8", errors="replace")]
    assert not bad, "\n".join(bad)


def test_blocking_work_leaves_the_loop_through_one_helper() -> None:
    """The package moves blocking work off the event loop only through modelport.offload (one pool, one
    cancellation rule); a worker process's single-thread executors that own the model are the exception."""
    package = TESTS.parent / "modelport"
    other_apis = ("asyncio.to_thread", "run_in_threadpool", "to_thread.run_sync", "run_in_executor(None")
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "offload.py":
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.relative_to(package)}: {api}" for api in other_apis if api in text]
    assert offenders == []
