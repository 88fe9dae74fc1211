"""Weighted k-nearest-neighbour classification on cosine similarity (InstDisc/DINO protocol)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Predicted labels of ``test_feats``.

    Each of the ``k`` most cosine-similar training features votes for its label
    with weight ``exp(sim / temperature)``.

    Args:
        train_feats: ``[N, D]``; train_labels: long ``[N]``; test_feats: ``[M, D]``.
    Returns:
        long ``[M]``.
    """
    if len(train_feats) < k:
        raise ValueError(f"kNN needs at least k={k} training features, got {len(train_feats)}")
    bank = F.normalize(train_feats.float(), dim=1)  # [N, D]
    preds = []
    for start in range(0, len(test_feats), chunk):
        q = F.normalize(test_feats[start : start + chunk].float(), dim=1)  # [m, D]
        sim, idx = (q @ bank.T).topk(k, dim=1)  # [m, k]
        weights = (sim / temperature).exp()
        votes = torch.zeros(len(q), num_classes)
        votes.scatter_add_(1, train_labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(
    train_feats, train_labels, test_feats, test_labels, num_classes: int, k: int = 20, temperature: float = 0.07
) -> float:
    """Top-1 accuracy in percent of :func:`knn_predict`."""
    pred = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature)
    return 100.0 * (pred == test_labels).float().mean().item()


def progress_reporter(log, what: str, every: float = 5.0):
    """``report(done, total)`` that logs ``what done/total (img/s, ETA)`` at most every ``every`` seconds
    (and at the end); ``log=None``: silent."""
    import time

    from siamim.train.progress import format_seconds

    start = time.monotonic()
    last = [start]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if log is None or (done < total and now - last[0] < every):
            return
        last[0] = now
        rate = done / max(now - start, 1e-9)
        eta = format_seconds((total - done) / rate) if done < total else "done"
        log(f"{what} {done}/{total} ({rate:.0f} img/s, ETA {eta})")

    return report


def evaluate_knn(
    encoder: torch.nn.Module, cfg, device: torch.device | str = "cpu", log=None, every: float = 5.0
) -> float:
    """kNN top-1 (%) of ``encoder``'s cls features: train split as memory bank, test split as queries.

    Uses ``cfg.data`` for the dataset and ``cfg.eval.knn_k / knn_temperature /
    knn_train_subset / knn_test_subset / batch_size``. ``log`` (e.g. ``print``) gets
    progress lines (what is extracted, n/N, img/s, ETA) every ``every`` seconds. With ``knn_train_subset``
    the bank is a fixed, seeded random subset of the training set; with
    ``knn_test_subset`` the queries are the first N test images.
    """
    import numpy as np

    from siamim.data.sources import build_source
    from siamim.eval.features import extract_features

    train = build_source(cfg.data.dataset, cfg.data.root, "train")
    test = build_source(cfg.data.dataset, cfg.data.root, "test")
    idx = None
    if cfg.eval.knn_train_subset is not None and cfg.eval.knn_train_subset < len(train):
        idx = np.sort(np.random.default_rng(0).choice(len(train), cfg.eval.knn_train_subset, replace=False))
    n_train = len(train) if idx is None else len(idx)
    n_test = len(test) if cfg.eval.knn_test_subset is None else min(len(test), cfg.eval.knn_test_subset)
    if log is not None:
        log(f"[siamim] kNN: features of {n_train} train (memory bank) + {n_test} test images, k={cfg.eval.knn_k}")
    bank = extract_features(
        encoder,
        train,
        cfg.data.img_size,
        idx,
        cfg.eval.batch_size,
        device,
        progress=progress_reporter(log, "[siamim] kNN: train features", every),
    )
    bank_labels = torch.from_numpy(train.labels if idx is None else train.labels[idx])
    q_idx = None
    if cfg.eval.knn_test_subset is not None and cfg.eval.knn_test_subset < len(test):
        q_idx = np.arange(cfg.eval.knn_test_subset)
    queries = extract_features(
        encoder,
        test,
        cfg.data.img_size,
        q_idx,
        cfg.eval.batch_size,
        device,
        progress=progress_reporter(log, "[siamim] kNN: test features", every),
    )
    q_labels = torch.from_numpy(test.labels if q_idx is None else test.labels[q_idx])
    return knn_accuracy(
        bank, bank_labels, queries, q_labels, len(train.classes), cfg.eval.knn_k, cfg.eval.knn_temperature
    )
