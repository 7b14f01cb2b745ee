"""A pytest plugin that reports the CPU each test module costs, servers and workers included.

    .venv/bin/python -m pytest -p tests.support.cpu_report -m "not chat_model and not training" -q

CPU time, not wall time: on a machine shared with other work, wall time says more about the
neighbours than about the tests. It counts this process and every child it has waited for (the
servers, which wait for their workers), so a module-scoped server is counted in the module
whose last test stops it. Use it to decide what belongs in `make test-fast` (`slow` is for a
test that costs more than 30 s of CPU on its own).
"""

from __future__ import annotations

import resource
import time
from collections import Counter

import pytest

_cpu: Counter[str] = Counter()
_wall: Counter[str] = Counter()
_mark = {"cpu": 0.0, "wall": 0.0}


def _now() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, time.monotonic()


def _charge(name: str) -> None:
    cpu, wall = _now()
    _cpu[name] += cpu - _mark["cpu"]
    _wall[name] += wall - _mark["wall"]
    _mark["cpu"], _mark["wall"] = cpu, wall


def pytest_sessionstart(session: pytest.Session) -> None:
    _mark["cpu"], _mark["wall"] = _now()


def pytest_collection_finish(session: pytest.Session) -> None:
    _charge("(start and collection)")


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _charge(nodeid.split("::")[0])


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    total = sum(_cpu.values())
    terminalreporter.write_sep("-", f"CPU by module: {total:.0f} s in all (user + system, children included)")
    for name, cpu in _cpu.most_common():
        terminalreporter.write_line(f"{cpu:8.1f} s CPU {_wall[name]:8.1f} s wall  {name}")
