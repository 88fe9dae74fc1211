"""The one subset rule of the evaluation: seeded, class-balanced (numpy only, no torch)."""

from __future__ import annotations

import numpy as np


def class_balanced_subset(labels: np.ndarray, fraction: float, seed: int, num_classes: int | None = None) -> np.ndarray:
    """Sorted indices int64 ``[K]`` of a class-balanced ``fraction`` of ``labels`` ``[N]``.

    Each class ``c`` contributes ``max(1, round(fraction * count_c))`` images, drawn without
    replacement by ``numpy.random.default_rng(seed)`` in ascending class order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must be in (0, 1] (0.01 is the 1% protocol)")
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) == 0:
            continue
        k = max(1, round(fraction * len(pool)))
        picked.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def limit_indices(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices int64 ``[K]`` into ``labels`` ``[N]``: all of them (``limit`` None or >= N), else the
    :func:`class_balanced_subset` of about ``limit`` images (``limit / N`` of each class)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    return class_balanced_subset(labels, limit / len(labels), seed)
