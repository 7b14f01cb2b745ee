"""Small exact statistics for tests that compare timings (no scipy in the test dependencies)."""

from __future__ import annotations

import itertools
import statistics


def signed_ranks(differences: list[float]) -> list[tuple[float, bool]]:
    """(rank of |d|, d > 0) for each nonzero difference; ties share their average rank."""
    nonzero = sorted((abs(d), d > 0) for d in differences if d != 0)
    out: list[tuple[float, bool]] = []
    i = 0
    while i < len(nonzero):
        j = i
        while j + 1 < len(nonzero) and nonzero[j + 1][0] == nonzero[i][0]:
            j += 1
        rank = (i + j + 2) / 2  # ranks i+1 .. j+1, averaged
        out += [(rank, positive) for _, positive in nonzero[i:j + 1]]
        i = j + 1
    return out


def wilcoxon_greater(differences: list[float]) -> float:
    """Exact one-sided p-value of the Wilcoxon signed-rank test that the differences tend to be
    positive: the share of the 2^n sign assignments whose positive rank sum is at least the
    observed one (n at most 20: enumerated)."""
    ranked = signed_ranks(differences)
    if not ranked:
        return 1.0
    if len(ranked) > 20:
        raise ValueError("enumerating more than 2^20 sign assignments; use fewer pairs")
    ranks = [r for r, _ in ranked]
    observed = sum(r for r, positive in ranked if positive)
    at_least = sum(1 for signs in itertools.product((0, 1), repeat=len(ranks))
                   if sum(r for r, s in zip(ranks, signs, strict=True) if s) >= observed - 1e-9)
    return at_least / 2 ** len(ranks)


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median of the pairwise ratios."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))
