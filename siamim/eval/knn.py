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
