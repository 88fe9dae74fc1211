"""Long-tail (counterpart of LVIS): a linear probe trained on a long-tailed training subset.

Construction (deterministic for a seed): the classes are ranked by a
permutation drawn by ``numpy.random.default_rng(seed)``; the class of rank
``r`` (0 = head) keeps ``round(n_max * imbalance ** (-r / (C - 1)))`` images,
``n_max`` = the smallest class count of the pool (6000 on full Fashion-MNIST,
so counts run 6000 ... 60 at imbalance 100), chosen without replacement by the
same generator. The probe is the LIN head (:mod:`siamim.eval.linear_probe`);
the test set stays balanced. Reported: overall top-1 and the mean per-class
accuracy of the ``num_rare`` rarest classes (the "AP rare" counterpart).
"""

from __future__ import annotations

import numpy as np


def longtail_counts(num_classes: int, n_max: int, imbalance: float) -> np.ndarray:
    """int64 ``[C]``: images kept per rank, ``n_max`` at rank 0 down to ``n_max / imbalance`` (at least 1)."""
    if imbalance < 1.0:
        raise ValueError(f"imbalance={imbalance} must be >= 1 (100 is the protocol's factor)")
    if num_classes < 2:
        raise ValueError(f"a long tail needs at least 2 classes, got {num_classes}")
    r = np.arange(num_classes)
    return np.maximum(1, np.round(n_max * imbalance ** (-r / (num_classes - 1)))).astype(np.int64)


def longtail_subset(
    labels: np.ndarray, imbalance: float = 100.0, seed: int = 0, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A long-tailed subset of ``labels`` ``[N]``.

    Returns:
        indices: sorted int64 ``[K]`` into ``labels``.
        order: int64 ``[C]``: class ids from head (most images) to tail (fewest).
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    pools = [np.flatnonzero(labels == c) for c in range(num_classes)]
    if min(len(p) for p in pools) == 0:
        empty = [c for c, p in enumerate(pools) if len(p) == 0]
        raise ValueError(f"classes {empty} have no images in the pool; a long tail needs every class")
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_classes)
    counts = longtail_counts(num_classes, min(len(p) for p in pools), imbalance)
    picked = [rng.choice(pools[c], size=int(k), replace=False) for c, k in zip(order, counts, strict=True)]
    return np.sort(np.concatenate(picked)).astype(np.int64), order.astype(np.int64)
