"""A pytest plugin that runs the collected tests backwards (modules, and the tests in each).

    .venv/bin/python -m pytest -p tests.support.reverse_order [-m "..."]

No test may depend on another having run first: a module that passes forwards and fails
backwards shares state between its tests that a fixture should own instead.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    items.reverse()
