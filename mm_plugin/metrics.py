"""Scores of predictions, shared by the training loop and deployment checks (plain tensors or arrays in)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def macro_f1(pred: Any, true: Any, num_classes: int) -> float:
    """The mean over classes of each class's F1 (a class with neither predictions nor samples counts 0)."""
    pred, true = np.asarray(pred), np.asarray(true)
    f1 = []
    for c in range(num_classes):
        tp = int(((pred == c) & (true == c)).sum())
        fp, fn = int(((pred == c) & (true != c)).sum()), int(((pred != c) & (true == c)).sum())
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(f1) / num_classes


def mcnemar(correct_a: str | Sequence[int], correct_b: str | Sequence[int]) -> tuple[int, int, float]:
    """Exact McNemar test of two models on the same samples, from which samples each gets right (``"0110..."``
    or 0/1 sequences): the images only the first gets right, only the second, and the two-sided p-value of
    the binomial test on those discordant images (1.0 when there are none)."""
    from scipy.stats import binomtest

    a, b = (np.array([int(c) for c in x], dtype=bool) for x in (correct_a, correct_b))
    if a.shape != b.shape:
        raise ValueError(f"the two models were scored on different samples ({a.size} and {b.size})")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)


#: The level at which a model counts as better than another on the same samples: one chosen among many on a
#: split (a search's candidates, their untrained states) leads there partly by luck, so a lead needs evidence.
PAIRED_ALPHA = 0.05


def beats(correct_a: str | Sequence[int], correct_b: str | Sequence[int], alpha: float = PAIRED_ALPHA) -> bool:
    """Whether the first model gets more of the same samples right than the second beyond McNemar's test at
    ``alpha`` (per-sample results as in :func:`mcnemar`)."""
    only_a, only_b, p = mcnemar(correct_a, correct_b)
    return only_a > only_b and p < alpha
