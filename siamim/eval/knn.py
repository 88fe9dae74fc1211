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


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes: int, k: int = 20,
                 temperature: float = 0.07) -> float:
    """Top-1 accuracy in percent of :func:`knn_predict`."""
    pred = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature)
    return 100.0 * (pred == test_labels).float().mean().item()


def evaluate_knn(encoder: torch.nn.Module, cfg, device: torch.device | str = "cpu") -> float:
    """kNN top-1 (%) of ``encoder``'s cls features: train split as memory bank, test split as queries.

    Uses ``cfg.data`` for the dataset and ``cfg.eval.knn_k / knn_temperature /
    knn_train_subset / knn_test_subset / batch_size``. With ``knn_train_subset``
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
    bank = extract_features(encoder, train, cfg.data.img_size, idx, cfg.eval.batch_size, device)
    bank_labels = torch.from_numpy(train.labels if idx is None else train.labels[idx])
    q_idx = None
    if cfg.eval.knn_test_subset is not None and cfg.eval.knn_test_subset < len(test):
        q_idx = np.arange(cfg.eval.knn_test_subset)
    queries = extract_features(encoder, test, cfg.data.img_size, q_idx, cfg.eval.batch_size, device)
    q_labels = torch.from_numpy(test.labels if q_idx is None else test.labels[q_idx])
    return knn_accuracy(bank, bank_labels, queries, q_labels, len(train.classes),
                        cfg.eval.knn_k, cfg.eval.knn_temperature)
