"""Weighted k-nearest-neighbour classification on cosine similarity (InstDisc/DINO protocol)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from siamim.eval.subsets import limit_indices


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


def knn_top1(
    features: Callable[[str, np.ndarray], torch.Tensor],
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    settings,
    seed: int,
) -> float:
    """kNN top-1 (%): the one kNN evaluation of the pretraining job (its final metric) and ``--protocols knn``.

    The memory bank is the class-balanced seeded subset
    (:func:`~siamim.eval.subsets.limit_indices`, ``seed``) of ``settings.train_subset`` of
    the training images, the queries the same rule on ``settings.test_subset`` test images
    (``seed + 1``); ``None`` takes all.

    Args:
        features: ``features(split, rows)`` -> cls features ``[len(rows), D]`` of images ``rows``
            (int64 ``[K]``) of split ``"train"`` / ``"test"``.
        train_labels: int ``[N]``; test_labels: int ``[M]``.
        settings: the ``eval.knn`` section (``k``, ``temperature``, ``train_subset``, ``test_subset``).
    """
    bank_rows = limit_indices(train_labels, settings.train_subset, seed)
    query_rows = limit_indices(test_labels, settings.test_subset, seed + 1)
    bank = features("train", bank_rows)
    queries = features("test", query_rows)
    bank_labels = torch.as_tensor(np.asarray(train_labels)[bank_rows], dtype=torch.long)
    query_labels = torch.as_tensor(np.asarray(test_labels)[query_rows], dtype=torch.long)
    return knn_accuracy(bank, bank_labels, queries, query_labels, num_classes, settings.k, settings.temperature)


def evaluate_knn(
    encoder: torch.nn.Module, cfg, device: torch.device | str = "cpu", log=None, every: float = 5.0
) -> float:
    """The pretraining job's final metric: :func:`knn_top1` of ``encoder``'s cls features on ``cfg.data``'s
    train (memory bank) and test (queries) splits, with ``cfg.eval.knn`` and ``cfg.eval.seed``.

    Images are resized per batch (:class:`~siamim.eval.imageset.SourceImageSet`), so a large split is
    never held in memory. ``log`` (e.g. ``print``) gets progress lines (split, n/N, img/s, ETA) at most
    every ``every`` seconds; ``None``: silent.
    """
    from siamim.data.sources import build_source
    from siamim.eval.imageset import SourceImageSet
    from siamim.eval.representation import EncoderRepresentation, extract
    from siamim.train.progress import TaskProgress

    sources = {split: build_source(cfg.data.dataset, cfg.data.root, split) for split in ("train", "test")}
    rep = EncoderRepresentation(encoder)
    progress = TaskProgress(log, "[siamim] kNN:", every)

    def features(split: str, rows: np.ndarray) -> torch.Tensor:
        images = SourceImageSet(sources[split], cfg.data.img_size, rows)
        what = f"{split} features ({'memory bank' if split == 'train' else 'queries'}, k={cfg.eval.knn.k})"
        return extract(rep, images, "cls", cfg.eval.batch_size, device, progress=progress(what, unit="img"))

    return knn_top1(
        features,
        sources["train"].labels,
        sources["test"].labels,
        len(sources["train"].classes),
        cfg.eval.knn,
        cfg.eval.seed,
    )
