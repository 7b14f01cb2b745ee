"""The jailbreak row's refit (tools/safety/refit_jailbreak.py): the fit and the threshold rule,
on synthetic features (the whole refit runs on the shipped model: `python -m tools.safety.refit_jailbreak`)."""

from __future__ import annotations

import numpy as np
import torch

from tools.safety.refit_jailbreak import fit_row, lowest_threshold
from tools.safety.train import JAILBREAK_FPR, THRESHOLD_GRID


def test_the_refit_stops_flagging_negatives_the_shipped_row_flagged_and_keeps_the_positives() -> None:
    gen = torch.Generator().manual_seed(0)
    dim = 16
    positives = torch.randn(60, dim, generator=gen) * 0.3 + torch.eye(dim)[0] * 3  # jailbreaks: along e0
    developer = torch.randn(600, dim, generator=gen) * 0.3 + torch.eye(dim)[1] * 3  # code, ids: along e1
    plain = torch.randn(600, dim, generator=gen) * 0.3
    x = torch.cat([positives, developer, plain])
    y = torch.cat([torch.ones(60), torch.zeros(1200)])
    w0, b0 = torch.eye(dim)[0] + torch.eye(dim)[1], torch.tensor(-1.0)  # the shipped row flags e0 and e1 alike
    assert float(torch.sigmoid(developer @ w0 + b0).mean()) > 0.8
    w, b = fit_row(x, y, w0, b0)
    assert float(torch.sigmoid(developer @ w + b).mean()) < 0.1
    assert float(torch.sigmoid(positives @ w + b).mean()) > 0.8
    assert float(torch.sigmoid(plain @ w + b).mean()) < 0.1


def test_the_threshold_is_the_lowest_that_holds_every_group_to_the_bound() -> None:
    rng = np.random.default_rng(1)
    slice_negatives, developer = rng.uniform(0, 0.3, 1000), rng.uniform(0, 0.6, 500)
    t = lowest_threshold([slice_negatives, developer])
    assert all(float((s >= t).mean()) <= JAILBREAK_FPR for s in (slice_negatives, developer))
    lower = [g for g in THRESHOLD_GRID if g < t]
    assert lower and float((developer >= lower[-1]).mean()) > JAILBREAK_FPR  # the developer texts set it
    assert lowest_threshold([np.full(10, 0.99)]) == THRESHOLD_GRID[-1]  # nothing holds: the top of the grid
