"""FT: end-to-end fine-tuning, MAE recipe (docs/method.md, "Evaluation protocols"), with an epoch budget.

Recipe (MAE ``main_finetune.py``, timm's implementations): AdamW (betas 0.9,
0.999) over :func:`timm.optim.param_groups_layer_decay` groups (layer-wise lr
decay, no weight decay on 1-D parameters, cls token and position embedding),
lr = ``blr * batch / 256``, per-iteration linear warm-up + half-cycle cosine,
stochastic depth linearly increasing to ``drop_path``, :class:`timm.data.Mixup`
(mixup + cutmix, label smoothing folded into the soft targets) with
:class:`timm.loss.SoftTargetCrossEntropy` (or
:class:`timm.loss.LabelSmoothingCrossEntropy` when both mixing alphas are 0).
Augmentation at our scale: random crop with 2-pixel zero padding + horizontal
flip (RandAugment/random-erasing are left out on 32x32 greyscale items). The
classifier is timm's head on the cls token (``global_pool="token"``).

Raw-pixel baseline: there is no encoder to fine-tune; its FT counterpart is a
linear classifier on the flattened pixels trained with the same optimiser,
schedule, mixing, smoothing and budget (no layer decay, no drop path).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.layers import DropPath
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay

from siamim.config import EvalConfig
from siamim.eval.imageset import ImageSet
from siamim.eval.linear_probe import lr_at

_FT_KEYS = (
    "epochs",
    "batch_size",
    "blr",
    "layer_decay",
    "weight_decay",
    "drop_path",
    "smoothing",
    "mixup",
    "cutmix",
    "warmup_epochs",
)

_EVAL_DEFAULTS = EvalConfig()


@dataclass
class FinetuneSettings:
    """FT hyper-parameters; the defaults are ``EvalConfig``'s ``ft_*`` keys (one source of truth)."""

    epochs: float = _EVAL_DEFAULTS.ft_epochs
    batch_size: int = _EVAL_DEFAULTS.ft_batch_size
    blr: float = _EVAL_DEFAULTS.ft_blr
    layer_decay: float = _EVAL_DEFAULTS.ft_layer_decay
    weight_decay: float = _EVAL_DEFAULTS.ft_weight_decay
    drop_path: float = _EVAL_DEFAULTS.ft_drop_path
    smoothing: float = _EVAL_DEFAULTS.ft_smoothing
    mixup: float = _EVAL_DEFAULTS.ft_mixup
    cutmix: float = _EVAL_DEFAULTS.ft_cutmix
    warmup_epochs: float = _EVAL_DEFAULTS.ft_warmup_epochs
    min_lr: float = 1e-6
    seed: int = 0

    @classmethod
    def from_eval(cls, e: EvalConfig) -> FinetuneSettings:
        return cls(**{k: getattr(e, f"ft_{k}") for k in _FT_KEYS}, seed=e.seed)


@dataclass
class FinetuneResult:
    model: torch.nn.Module
    accuracy: float
    steps: int
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch


def set_drop_path(vit: torch.nn.Module, rate: float) -> None:
    """Stochastic depth linearly increasing from 0 to ``rate`` over timm ViT ``blocks``."""
    n = len(vit.blocks)
    for i, blk in enumerate(vit.blocks):
        r = rate * i / max(1, n - 1)
        blk.drop_path1 = DropPath(r) if r > 0 else torch.nn.Identity()
        blk.drop_path2 = DropPath(r) if r > 0 else torch.nn.Identity()


def build_classifier(rep, num_classes: int, img_size: int, drop_path: float) -> torch.nn.Module:
    """The model FT trains: a copy of ``rep.encoder`` with a fresh head, or, for raw pixels,
    ``Flatten + Linear(3*S*S, C)``. Maps normalised ``[B, 3, S, S]`` -> logits ``[B, C]``."""
    if getattr(rep, "encoder", None) is None:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * img_size * img_size, num_classes))
    model = copy.deepcopy(rep.encoder)
    model.reset_classifier(num_classes)
    torch.nn.init.trunc_normal_(model.head.weight, std=2e-5)  # MAE's FT head init
    torch.nn.init.zeros_(model.head.bias)
    for name, p in model.named_parameters():
        p.requires_grad_(name != "pos_embed")  # fixed sin-cos position embedding stays fixed
    set_drop_path(model, drop_path)
    return model


def param_groups(model: torch.nn.Module, s: FinetuneSettings) -> list[dict]:
    """Layer-decayed AdamW groups for a timm ViT; plain decay/no-decay groups otherwise."""
    if hasattr(model, "group_matcher"):
        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
        return param_groups_layer_decay(model, s.weight_decay, no_weight_decay_list=skip, layer_decay=s.layer_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        dict(params=[p for p in params if p.ndim > 1], weight_decay=s.weight_decay, lr_scale=1.0),
        dict(params=[p for p in params if p.ndim <= 1], weight_decay=0.0, lr_scale=1.0),
    ]


def augment(x01: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop (zero padding ``pad``) + horizontal flip of float ``[B, 3, S, S]``."""
    b, _, s, _ = x01.shape
    padded = F.pad(x01, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    rows = (dy.view(b, 1) + torch.arange(s).view(1, s)).to(x01.device)  # [B, S]
    cols = dx.view(b, 1) + torch.arange(s).view(1, s)
    cols = torch.where(flip.view(b, 1), cols.flip(1), cols).to(x01.device)  # [B, S]
    out = padded[torch.arange(b, device=x01.device).view(b, 1, 1), :, rows.view(b, s, 1), cols.view(b, 1, s)]
    return out.permute(0, 3, 1, 2)  # advanced indexing puts channels last -> [B, 3, S, S]


@torch.no_grad()
def classifier_accuracy(model: torch.nn.Module, images: ImageSet, batch_size: int = 512, device="cpu") -> float:
    """Top-1 accuracy in percent of ``model`` (normalised input -> logits) on ``images``."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        end = min(start + batch_size, len(images))
        pred = model(images.batch(start, end, device)).argmax(1).cpu()
        correct += int((pred == images.labels[start:end]).sum())
    return 100.0 * correct / len(images)


def finetune(
    rep, train: ImageSet, test: ImageSet, settings: FinetuneSettings | None = None, device="cpu", progress=None
) -> FinetuneResult:
    """Fine-tune ``rep`` (see :func:`build_classifier`) on ``train``; top-1 on ``test``.

    The budget is ``settings.epochs`` (fractions allowed: ``0.5`` = half an epoch of steps).
    ``progress(epoch_done, epochs, mean_loss)`` is called after each (partial) epoch.
    ``settings``: ``None`` -> the defaults.
    """
    s = settings if settings is not None else FinetuneSettings()
    bs = min(s.batch_size, len(train)) // 2 * 2  # Mixup needs an even batch
    if bs < 2:
        raise ValueError(f"fine-tuning needs at least 2 training images, got {len(train)}")
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    model = build_classifier(rep, train.num_classes, train.img_size, s.drop_path).to(device)
    groups = param_groups(model, s)
    opt = torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999))
    mixing = s.mixup > 0 or s.cutmix > 0
    mix = (
        Mixup(mixup_alpha=s.mixup, cutmix_alpha=s.cutmix, label_smoothing=s.smoothing, num_classes=train.num_classes)
        if mixing
        else None
    )
    criterion = SoftTargetCrossEntropy() if mixing else LabelSmoothingCrossEntropy(s.smoothing)
    steps_per_epoch = len(train) // bs
    total = max(1, round(s.epochs * steps_per_epoch))
    warmup = round(s.warmup_epochs * steps_per_epoch)
    base_lr = s.blr * bs / 256
    step, losses = 0, []
    n_epochs = -(-total // steps_per_epoch)
    model.train()
    for epoch in range(n_epochs):
        perm = torch.randperm(len(train), generator=gen)
        run = []
        for k in range(steps_per_epoch):
            if step >= total:
                break
            idx = perm[k * bs : (k + 1) * bs]
            lr = lr_at(step, total, warmup, base_lr, s.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            x01 = augment(train.images[idx].to(device).float().div_(255.0), gen)
            x, y = train.normalize(x01), train.labels[idx].to(device)
            if mix is not None:
                x, y = mix(x, y)
            loss = criterion(model(x), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss is {loss.item()} at step {step}; lower eval.ft_blr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run.append(loss.item())
            step += 1
        losses.append(sum(run) / max(1, len(run)))
        if progress is not None:
            progress(epoch + 1, n_epochs, losses[-1])
        model.train()
    acc = classifier_accuracy(model, test, device=device)
    return FinetuneResult(model.eval(), acc, step, losses)
