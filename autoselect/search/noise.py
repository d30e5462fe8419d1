"""Paired comparisons of plans scored on the same validation images: which differences are within noise.

Two plans evaluated on the same ``n`` images differ only on the images one gets right and the other wrong (the
discordant pairs). McNemar's exact test asks whether those split evenly: under the null hypothesis (the plans are
equally good) the count one way is Binomial(discordant, 1/2). Its two-sided p-value at or above ``alpha`` means the
difference is within noise: the plans tie. On 1,000 images, one standard error of a top-1 is about 1 point, while
the paired test, which ignores the images both get right or wrong, resolves smaller differences when the plans
disagree on few images.

Per-image correctness travels between processes (Ray trials, the Optuna study) as :func:`pack`'s base64 string.
:func:`spearman` is the rank correlation the confirmation and the profile's fidelity report. Numpy and pandas.
"""

from __future__ import annotations

import base64
import math

import numpy as np
import pandas as pd

__all__ = ["ALPHA", "mcnemar_p", "pack", "spearman", "tied", "unpack"]

ALPHA = 0.05  # below this, a difference is not noise


def pack(correct: np.ndarray) -> str:
    """Per-image correctness (booleans) as ``"N:base64 of the packed bits"``."""
    bits = np.asarray(correct, dtype=bool)
    return f"{len(bits)}:{base64.b64encode(np.packbits(bits).tobytes()).decode()}"


def unpack(text: str) -> np.ndarray:
    n, _, data = text.partition(":")
    raw = np.frombuffer(base64.b64decode(data), dtype=np.uint8)
    return np.unpackbits(raw)[: int(n)].astype(bool)


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of per-image correctness vectors ``a`` and ``b`` (same images, same order)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison of {a.shape[0]} and {b.shape[0]} images: not the same images")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    # P(X <= k), X ~ Binomial(n, 1/2), in log space (n may be in the thousands)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return min(1.0, 2.0 * tail)


def tied(best: np.ndarray, other: np.ndarray, alpha: float = ALPHA) -> bool:
    """Whether ``other`` is within noise of ``best`` (McNemar p at or above ``alpha``)."""
    return mcnemar_p(best, other) >= alpha


def spearman(a: pd.Series, b: pd.Series) -> float | None:
    """Spearman rank correlation of two aligned series; None with fewer than 3 values or a constant one."""
    if len(a) < 3 or a.nunique() < 2 or b.nunique() < 2:
        return None
    return float(a.rank().corr(b.rank()))
