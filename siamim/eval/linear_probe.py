"""LIN: linear probe on frozen features, MAE protocol (docs/method.md, "Evaluation protocols").

The head is ``BatchNorm1d(D, affine=False, eps=1e-6)`` followed by a linear
layer (weights trunc-normal, std 0.01; bias 0), trained with LARS (momentum
0.9, weight decay 0, trust coefficient 0.001, layer adaptation on weight
matrices only), lr = ``blr * batch / 256``, linear warm-up then half-cycle
cosine, per iteration, as MAE's ``main_linprobe.py``. Features are extracted
once and cached; the probe trains on them (no augmentation: the cached-feature
variant of the protocol).

*Interpretation* (scale): MAE runs ~7k LARS steps (90 epochs of 1.28M images
at batch 16384, lr 6.4). LARS moves a weight by ``lr * 0.001`` of its norm per
step, so an epoch budget on 60k images (and far fewer on the long-tailed or
limited subsets) leaves the head nearly untrained. The budget is therefore a
fixed number of steps (``eval.lin.steps``, default 2000, 10% warm-up) whatever
the training-set size, and the default ``eval.lin.blr=1.6`` keeps MAE's
per-step lr (6.4 at our batch 1024).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from timm.optim import Lars

from siamim.train.schedules import lr_at


class LinearProbe(torch.nn.Sequential):
    """``[B, D]`` (or ``[..., D]`` for tokens, flattened by the caller) -> logits ``[B, C]``."""

    def __init__(self, dim: int, num_classes: int):
        head = torch.nn.Linear(dim, num_classes)
        torch.nn.init.trunc_normal_(head.weight, std=0.01)
        torch.nn.init.zeros_(head.bias)
        super().__init__(torch.nn.BatchNorm1d(dim, affine=False, eps=1e-6), head)


def lars_groups(module: torch.nn.Module) -> list[dict]:
    """MAE's LARS parameter groups: adapt weight matrices, leave biases/1-D parameters plain SGD."""
    mats = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
    vecs = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
    return [dict(params=mats, always_adapt=True), dict(params=vecs, always_adapt=False)]


def fit_head(
    head: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    batch_size: int,
    blr: float,
    warmup_steps: int,
    seed: int = 0,
    device="cpu",
    progress: Callable[[int, int, float], None] | None = None,
    optimizer: str = "lars",
) -> torch.nn.Module:
    """Train ``head`` for ``steps`` optimiser steps on cached ``inputs`` ``[N, ...]`` / ``targets`` ``[N, ...]``.

    ``loss_fn(head, x_batch, y_batch)`` returns the scalar loss. Batches are
    drawn by a seeded permutation per pass over the data; a last batch smaller
    than 2 is skipped (BatchNorm needs two samples). lr = ``blr * batch / 256``,
    :func:`~siamim.train.schedules.lr_at`: linear warm-up over ``warmup_steps`` then half-cycle cosine. ``optimizer``:
    ``"lars"`` (MAE LIN: momentum 0.9, no weight decay) or ``"adamw"`` (weight
    decay 0, for heads with no paper recipe such as the dense probe). Returns
    ``head`` in eval mode. ``progress(step, steps, loss)`` is called after every pass.
    """
    n = len(inputs)
    if n < 2:
        raise ValueError(f"a probe needs at least 2 training samples, got {n}")
    if steps < 1:
        raise ValueError(f"a probe needs at least 1 step, got steps={steps}")
    batch_size = max(2, min(batch_size, n))
    head.to(device).train()
    if optimizer == "lars":
        opt = Lars(lars_groups(head), lr=0.0, momentum=0.9, weight_decay=0.0, trust_coeff=0.001)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(head.parameters(), lr=0.0, weight_decay=0.0)
    else:
        raise ValueError(f"optimizer must be 'lars' or 'adamw', got {optimizer!r}")
    base_lr = blr * batch_size / 256
    gen = torch.Generator().manual_seed(seed)
    step, loss = 0, torch.tensor(float("nan"))
    with single_thread_on_cpu(device):
        while step < steps:
            step, loss = _one_pass(
                head,
                opt,
                inputs,
                targets,
                loss_fn,
                perm_gen=gen,
                step=step,
                steps=steps,
                batch_size=batch_size,
                base_lr=base_lr,
                warmup_steps=warmup_steps,
                device=device,
            )
            if progress is not None:
                progress(step, steps, loss.item())
    return head.eval()


@contextlib.contextmanager
def single_thread_on_cpu(device):
    """Run small CPU workloads on one thread: a head's matmuls gain nothing from more threads, and
    OpenMP threads waiting for each other can slow such loops down (docs/benchmarks.md)."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _one_pass(head, opt, inputs, targets, loss_fn, *, perm_gen, step, steps, batch_size, base_lr, warmup_steps, device):
    """One seeded pass over the data (stopping at ``steps``); returns ``(step, last loss)``."""
    n = len(inputs)
    loss = torch.tensor(float("nan"))
    perm = torch.randperm(n, generator=perm_gen)
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        if len(idx) < 2 or step >= steps:
            continue
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, warmup_steps, base_lr)
        loss = loss_fn(head, inputs[idx].to(device), targets[idx].to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"probe loss is {loss.item()} at step {step}; lower the probe's blr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    return step, loss.detach()


def _ce(head, x, y):
    return torch.nn.functional.cross_entropy(head(x), y)


def train_linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    steps: int = 2000,
    batch_size: int = 1024,
    blr: float = 1.6,
    warmup_steps: int = 200,
    seed: int = 0,
    device="cpu",
    progress=None,
) -> LinearProbe:
    """Fit :class:`LinearProbe` on ``train_feats`` ``[N, D]`` / long ``train_labels`` ``[N]``."""
    if train_feats.ndim != 2 or len(train_feats) != len(train_labels):
        raise ValueError(
            f"train_feats must be [N, D] matching labels [N]; got {tuple(train_feats.shape)} "
            f"and {tuple(train_labels.shape)}"
        )
    torch.manual_seed(seed)
    probe = LinearProbe(train_feats.shape[1], num_classes)
    return fit_head(probe, train_feats, train_labels, _ce, steps, batch_size, blr, warmup_steps, seed, device, progress)


@torch.no_grad()
def predict(head: torch.nn.Module, feats: torch.Tensor, batch_size: int = 4096, device="cpu") -> torch.Tensor:
    """Argmax predictions long ``[N]`` of ``head`` on ``feats`` ``[N, D]``."""
    head.eval().to(device)
    return torch.cat(
        [head(feats[s : s + batch_size].to(device)).argmax(1).cpu() for s in range(0, len(feats), batch_size)]
    )


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * (pred == labels).float().mean().item()


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float ``[C]``: accuracy in percent of each class (NaN for classes absent from ``labels``)."""
    out = torch.full((num_classes,), float("nan"))
    for c in range(num_classes):
        m = labels == c
        if m.any():
            out[c] = 100.0 * (pred[m] == c).float().mean()
    return out
