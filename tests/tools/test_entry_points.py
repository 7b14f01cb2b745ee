"""The safety tools run the way their docs say: `python -m tools.safety.<tool>` from the root of
a clone, with the project's interpreter (they are not installed with the package)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("tool", ["evaluate", "train", "train_cascade"])
def test_tool_runs_from_the_repository_root(tool: str) -> None:
    r = subprocess.run([sys.executable, "-m", f"tools.safety.{tool}", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage:"), r.stdout


def test_the_package_ships_no_training_data() -> None:
    """Runtime code only: the training and evaluation data live beside the tools, not in modelport/."""
    package = ROOT / "modelport" / "safety"
    assert not (package / "data").exists()
    assert not [p.name for p in package.glob("*.py") if p.stem in ("train", "trainset", "evaluate", "model_answers",
                                                                              "train_cascade")]
    assert (ROOT / "tools" / "safety" / "data" / "eval.jsonl").is_file()
