"""Few-shot (1%): logistic regression on frozen features of 1% of the labels (MSN protocol).

Subset: :func:`siamim.eval.subsets.class_balanced_subset` (per class
``round(fraction * count_c)`` training images, 60 per class on Fashion-MNIST at 1%),
deterministic for a seed.

Classifier (MSN's ``logistic_eval.py`` with cyanure, re-implemented in torch
so it runs wherever torch runs): features centred by the labelled subset's mean
and rows L2-normalised (cyanure's ``preprocess(centering=True, normalize=True)``),
multinomial logistic regression with bias, objective
``mean CE + lambd/2 * ||W||^2``, solved with full-batch L-BFGS. Repeated over
several seeds; mean and standard deviation reported.

*Interpretation*: ``lambd`` defaults to 1e-4 (``eval.fewshot.lambd``). MSN's
0.0025 is tuned for 1000 classes and 12.8k labelled images; with 10 classes and
600 images it over-regularises (measurements: docs/benchmarks.md)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from siamim.eval.linear_probe import single_thread_on_cpu


def fit_logistic_regression(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, lambd: float = 1e-4, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on L2-normalised ``feats`` ``[N, D]``.

    Returns ``(W [D, C], b [C])`` minimising ``mean CE(norm(x) W + b, y) + lambd/2 ||W||^2``.
    """
    x = F.normalize(feats.float(), dim=1)
    y = labels.long()
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * lambd * (w * w).sum()
        loss.backward()
        return loss

    with single_thread_on_cpu(x.device):
        opt.step(closure)
    return w.detach(), b.detach()


def logistic_predict(w: torch.Tensor, b: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """long ``[M]`` predictions for ``feats`` ``[M, D]``."""
    return (F.normalize(feats.float(), dim=1) @ w + b).argmax(1)


def fewshot_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    lambd: float = 1e-4,
    max_iter: int = 200,
) -> float:
    """Top-1 accuracy in percent of logistic regression fitted on ``train_feats`` ``[K, D]``
    (both sets centred by the mean of ``train_feats``, then L2-normalised per row)."""
    mean = train_feats.float().mean(dim=0, keepdim=True)
    w, b = fit_logistic_regression(train_feats.float() - mean, train_labels, num_classes, lambd, max_iter)
    return 100.0 * (logistic_predict(w, b, test_feats.float() - mean) == test_labels).double().mean().item()


def seed_statistics(accs: list[float]) -> dict[str, float]:
    """``{"mean", "std", "min", "max"}`` of per-seed accuracies (std: population, ddof=0)."""
    a = np.asarray(accs, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max())}
