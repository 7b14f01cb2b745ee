"""The threshold rule of train.py on synthetic scores: the verdict a user sees (a category
flagged at `medium` when its >=medium or >=high output passes) keeps false positives on benign
texts at or under CATEGORY_FPR, not only each output alone; harmful texts of another category
are not counted as false positives."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.safety.classifier import OUTPUTS
from tools.safety.train import CALIBRATION_FPR, CATEGORY_FPR, THRESHOLD_GRID, calibrate


def _scores(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """2,000 texts, 1,000 without any label; the >=medium and >=high outputs of the negatives
    are independent noise, so at the threshold where each alone passes CATEGORY_FPR their
    union passes about twice that (2% against 1% for seed 7)."""
    rng = np.random.default_rng(seed)
    n, pos = 2000, 1000
    y = np.zeros((n, len(OUTPUTS)), dtype=np.float32)
    probs = rng.uniform(0.0, 1.0, size=(n, len(OUTPUTS))) ** 12  # negatives: mostly low scores
    for j, name in enumerate(OUTPUTS):
        if name.endswith(">=low") or name.endswith(">=medium") or name in ("jailbreak", "profanity"):
            y[:pos, j] = 1
            probs[:pos, j] = rng.uniform(0.5, 1.0, size=pos)
    return probs, y


def test_the_medium_verdict_keeps_its_false_positive_rate_and_levels_are_ordered() -> None:
    probs, y = _scores(7)
    thr = calibrate(probs, y)
    assert set(thr) == set(OUTPUTS)
    neg = y[:, OUTPUTS.index("violence>=low")] == 0
    med, high = probs[neg, OUTPUTS.index("violence>=medium")], probs[neg, OUTPUTS.index("violence>=high")]
    verdict = (med >= thr["violence>=medium"]) | (high >= thr["violence>=high"])
    assert verdict.mean() <= CATEGORY_FPR
    for cat in ("hate", "sexual", "violence", "self_harm"):
        assert thr[f"{cat}>=high"] >= thr[f"{cat}>=medium"]
        assert min(THRESHOLD_GRID) <= thr[f"{cat}>=medium"] <= max(THRESHOLD_GRID)
    jb = probs[y[:, OUTPUTS.index("jailbreak")] == 0, OUTPUTS.index("jailbreak")]
    assert (jb >= thr["jailbreak"]).mean() <= CALIBRATION_FPR


def test_a_slice_without_benign_texts_is_refused() -> None:
    probs, y = _scores(10)
    y[:, OUTPUTS.index("profanity")] = 1  # every text now carries a label
    with pytest.raises(ValueError, match="no benign text"):
        calibrate(probs, y)


def test_no_threshold_passes_so_the_top_of_the_grid_is_used() -> None:
    probs, y = _scores(8)
    probs[y[:, 0] == 0, OUTPUTS.index("hate>=medium")] = 0.999  # every negative scores above the grid
    thr = calibrate(probs, y)
    assert thr["hate>=medium"] == max(THRESHOLD_GRID) == thr["hate>=high"]


def test_texts_of_another_category_do_not_raise_a_category_threshold() -> None:
    """A self-harm note that also scores as violence is a category error, not a benign false
    positive: 300 such texts at 0.99 leave the violence thresholds where they were."""
    probs, y = _scores(9)
    before = calibrate(probs, y)
    other = np.zeros((300, len(OUTPUTS)), dtype=np.float32)
    other[:, OUTPUTS.index("self_harm>=low")] = other[:, OUTPUTS.index("self_harm>=medium")] = 1
    other_probs = np.full((300, len(OUTPUTS)), 0.99, dtype=np.float32)
    after = calibrate(np.concatenate([probs, other_probs]), np.concatenate([y, other]))
    assert after["violence>=medium"] == before["violence>=medium"] < max(THRESHOLD_GRID)
    assert after["jailbreak"] > before["jailbreak"]  # flags still count every text without the flag
