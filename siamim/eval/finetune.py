"""FT: end-to-end fine-tuning, MAE recipe (docs/method.md, "Evaluation protocols"), with an epoch budget.

Recipe (MAE ``main_finetune.py``, timm's implementations): the encoder rebuilt by
``timm.create_model(..., drop_path_rate=drop_path)`` (stochastic depth linearly
increasing to ``drop_path``) with the representation's weights and a fresh head;
AdamW (betas 0.9, 0.999) over :func:`timm.optim.param_groups_layer_decay` groups
(layer-wise lr decay, no weight decay on 1-D parameters, cls token and position
embedding), lr = ``blr * batch / 256``, per-iteration linear warm-up + half-cycle
cosine (:func:`siamim.train.schedules.lr_at`), :class:`timm.data.Mixup` (mixup +
cutmix, label smoothing folded into the soft targets) with
:class:`timm.loss.SoftTargetCrossEntropy` (or
:class:`timm.loss.LabelSmoothingCrossEntropy` when both mixing alphas are 0).
Augmentation at our scale: random crop with 2-pixel zero padding + horizontal
flip (RandAugment/random-erasing are left out on small greyscale items). The
classifier is timm's head on the cls token (``global_pool="token"``).

Raw-pixel baseline: there is no encoder to fine-tune; its FT counterpart is a
linear classifier on the flattened pixels trained with the same optimiser,
schedule, mixing, smoothing and budget (no layer decay, no drop path).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import timm
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay, param_groups_weight_decay

from siamim.eval.imageset import ImageSet
from siamim.model.encoder import timm_kwargs
from siamim.train.schedules import lr_at


@dataclass
class FinetuneResult:
    model: torch.nn.Module
    accuracy: float
    steps: int
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch


def build_classifier(rep, num_classes: int, model_cfg, img_size: int, drop_path: float) -> torch.nn.Module:
    """The model FT trains. Maps normalised ``[B, 3, S, S]`` -> logits ``[B, C]``.

    An encoder representation: ``timm.create_model(model_cfg.timm_name, drop_path_rate=drop_path, ...)``
    (the architecture of ``model_cfg`` at ``img_size``) holding ``rep.encoder``'s weights, with a fresh
    ``C``-way head (MAE's init: trunc-normal std 2e-5, bias 0); the fixed sin-cos position embedding
    stays frozen. Raw pixels: ``Flatten + Linear(3*S*S, C)``.
    """
    if getattr(rep, "encoder", None) is None:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * img_size * img_size, num_classes))
    kwargs = {**timm_kwargs(model_cfg, img_size), "num_classes": num_classes, "drop_path_rate": drop_path}
    model = timm.create_model(model_cfg.timm_name, pretrained=False, **kwargs)
    missing, unexpected = model.load_state_dict(rep.encoder.state_dict(), strict=False)
    if unexpected or set(missing) != {"head.weight", "head.bias"}:
        raise ValueError(
            f"the representation's encoder does not fit model {model_cfg.timm_name} "
            f"(missing {missing}, unexpected {unexpected})"
        )
    torch.nn.init.trunc_normal_(model.head.weight, std=2e-5)
    torch.nn.init.zeros_(model.head.bias)
    model.pos_embed.requires_grad_(False)
    return model


class _MaeLayers:
    """A timm ViT as :func:`timm.optim.param_groups_layer_decay` sees it, with MAE's layer ids
    (``get_layer_id_for_vit``): cls token, position and patch embedding 0, block ``i`` ``i + 1``, the final
    norm and the head ``depth + 1`` (lr scale 1). timm's own matcher puts the final norm with the last block."""

    def __init__(self, model: torch.nn.Module):
        self.named_parameters = model.named_parameters

    @staticmethod
    def group_matcher(coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed", blocks=r"^blocks\.(\d+)", head=r"^norm|^fc_norm|^head")


def layer_decay_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups of MAE's fine-tuning (``util/lr_decay.py``), built by timm's
    :func:`~timm.optim.param_groups_layer_decay`: ``lr_scale = layer_decay ** (depth + 1 - layer id)``, no
    weight decay on 1-D parameters and ``no_weight_decay()`` names. The raw-pixel classifier (no layers to
    decay): timm's decay / no-decay groups."""
    if hasattr(model, "group_matcher"):
        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
        return param_groups_layer_decay(
            _MaeLayers(model), weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay
        )
    return param_groups_weight_decay(model, weight_decay)


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
    rep,
    train: ImageSet,
    test: ImageSet,
    model_cfg,
    *,
    epochs: float,
    batch_size: int,
    blr: float,
    min_lr: float,
    warmup_epochs: float,
    layer_decay: float,
    weight_decay: float,
    drop_path: float,
    smoothing: float,
    mixup: float,
    cutmix: float,
    seed: int = 0,
    device="cpu",
    progress=None,
) -> FinetuneResult:
    """Fine-tune ``rep`` (see :func:`build_classifier`; ``model_cfg``: its architecture) on ``train``
    (uint8 ``[N, 3, S, S]`` images, long labels ``[N]``); top-1 on ``test``.

    The recipe (the ``eval.ft`` keys, docs/evaluation.md): an ``epochs`` budget (fractions allowed: ``0.5``
    = half an epoch of steps) of ``batch_size`` batches (rounded down to even for Mixup), lr = ``blr *
    batch / 256`` warmed up over ``warmup_epochs`` then cosine to ``min_lr``; ``layer_decay`` and
    ``weight_decay`` (:func:`layer_decay_groups`); stochastic depth up to ``drop_path``; label
    ``smoothing``; ``mixup`` / ``cutmix`` alphas (both 0: no mixing).
    ``progress(epoch_done, epochs, mean_loss)`` is called after each (partial) epoch.
    """
    bs = min(batch_size, len(train)) // 2 * 2  # Mixup needs an even batch
    if bs < 2:
        raise ValueError(f"fine-tuning needs at least 2 training images, got {len(train)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_classifier(rep, train.num_classes, model_cfg, train.img_size, drop_path).to(device)
    groups = layer_decay_groups(model, weight_decay, layer_decay)
    opt = torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999))
    mixing = mixup > 0 or cutmix > 0
    mix = (
        Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=train.num_classes)
        if mixing
        else None
    )
    criterion = SoftTargetCrossEntropy() if mixing else LabelSmoothingCrossEntropy(smoothing)
    steps_per_epoch = len(train) // bs
    total = max(1, round(epochs * steps_per_epoch))
    warmup = round(warmup_epochs * steps_per_epoch)
    base_lr = blr * bs / 256
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
            lr = lr_at(step, total, warmup, base_lr, min_lr)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            x01 = augment(train.images[idx].to(device).float().div_(255.0), gen)
            x, y = train.normalize(x01), train.labels[idx].to(device)
            if mix is not None:
                x, y = mix(x, y)
            loss = criterion(model(x), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss is {loss.item()} at step {step}; lower eval.ft.blr")
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
