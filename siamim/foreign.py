"""Checkpoints of other code bases in: the official SiameseIM release and facebookresearch/mae.

Both releases save ``{"model": state_dict, ...}`` (``util/misc.py`` ``save_model``:
``model``, ``optimizer``, ``epoch``, ``scaler``, ``args``; MAE's published encoder
files hold ``model`` alone). Their encoders use timm's ViT key names, so mapping is
choosing the encoder's keys and dropping the rest, with every key accounted for:

* **official SiameseIM** (``models_sim.py``, ``SiameseIMViT``): encoder
  ``patch_embed.proj.*``, ``cls_token``, ``pos_embed``, ``blocks.<i>.*``; dropped:
  the EMA target (``mm_*``), the projector / predictor (``decoder_embed``,
  ``mask_token``, ``decoder_pos_embed``, ``projector_decoder_blocks``,
  ``predictor_decoder_blocks``, ``decoder_pred``, ``decoder_pos_mlp``, ``student_norm``,
  ``teacher_norm``). The release's encoder has **no final LayerNorm** (its last block
  feeds the projector); timm's ``norm`` is filled with weight 1 / bias 0, which is what
  timm gives when it loads the release non-strictly and what this project's own exports
  hold (``siamim/model/encoder.py``): ``forward_features`` is the last block's tokens
  standardised per token.
* **MAE** (``models_mae.py``, ``MaskedAutoencoderViT``): encoder as above plus its
  trained ``norm.*``; dropped: ``decoder_embed``, ``mask_token``, ``decoder_pos_embed``,
  ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``.

A key outside these lists is an error that names it (nothing is silently lost), and so
is a missing encoder key. The architecture comes from the weights' shapes (width, depth,
patch size, grid, MLP ratio); the head count cannot, so it is the release's for its
model name (``args.model``: base 12, large 16, huge 16), else the standard ViT head count
for the width (192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16), else width / 64, unless
given (``num_heads``). Layer-scale checkpoints (``--init_values``; not the released
recipe) are refused: this project's encoder has no layer scale.

:func:`read_checkpoint` reads any checkpoint this project understands (its own training
state or encoder file, a timm export folder, the two foreign layouts) as a siamim state
dict that :func:`siamim.checkpoint.load_encoder` and :func:`siamim.checkpoint.export_encoder`
take. Foreign files are unpickled with ``weights_only=True`` (tensors, containers and
``argparse.Namespace`` only).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from siamim.errors import UserError

if TYPE_CHECKING:
    import torch

    from siamim.config import Config

OFFICIAL_SIAMIM = "official-siamim"
MAE = "mae"

BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
BLOCK_PARAMS = tuple(
    f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")
)
STEM_KEYS = ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed")
NORM_KEYS = ("norm.weight", "norm.bias")
# Names (or prefixes, ending in "." or "_") of what each release holds besides the encoder.
DECODER_MAE = ("decoder_embed.", "mask_token", "decoder_pos_embed", "decoder_blocks.", "decoder_norm.", "decoder_pred.")
DECODER_SIAMIM = (
    "decoder_embed.",
    "mask_token",
    "decoder_pos_embed",
    "projector_decoder_blocks.",
    "predictor_decoder_blocks.",
    "decoder_pred.",
    "decoder_pos_mlp.",
    "student_norm.",
    "teacher_norm.",
    "mm_",
)
SIAMIM_MARKERS = ("mm_", "projector_decoder_blocks.", "predictor_decoder_blocks.", "decoder_pos_mlp.")
RELEASE_HEADS = {"base": 12, "large": 16, "huge": 16}  # models_sim.py / models_mae.py model functions
WIDTH_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


class ForeignCheckpointError(UserError, ValueError):
    """A checkpoint is not in a layout this module maps, or maps with keys left over; the message names them."""


def _matches(key: str, names: tuple[str, ...]) -> bool:
    return any(key.startswith(n) if n.endswith((".", "_")) else key == n for n in names)


def detect_layout(model: dict) -> str | None:
    """``"official-siamim"``, ``"mae"`` or None for a state dict ``model`` (the checkpoint's ``model`` entry)."""
    if not all(k in model for k in STEM_KEYS) or "blocks.0.attn.qkv.weight" not in model:
        return None
    if any(_matches(k, SIAMIM_MARKERS) for k in model):
        return OFFICIAL_SIAMIM
    return MAE  # MAE's pretraining checkpoint, or its encoder alone


def map_encoder(model: dict, layout: str) -> dict[str, torch.Tensor]:
    """The encoder of a state dict in ``layout`` with timm's ``VisionTransformer`` key names.

    Args:
        model: the release's state dict (``checkpoint["model"]``).
        layout: ``"official-siamim"`` or ``"mae"``.
    Returns:
        ``{timm key: tensor}``: stem, ``blocks.<i>.*`` and ``norm.*`` (filled with 1 / 0 for SiameseIM).
    Raises:
        ForeignCheckpointError: a key neither encoder nor known non-encoder part, a missing
        encoder key, or layer scale.
    """
    import torch

    dropped = DECODER_SIAMIM if layout == OFFICIAL_SIAMIM else DECODER_MAE
    encoder, unknown = {}, []
    for key, value in model.items():
        if key in STEM_KEYS or key in NORM_KEYS or BLOCK_KEY.match(key):
            encoder[key] = value
        elif not _matches(key, dropped):
            unknown.append(key)
    if any(".ls1." in k or ".ls2." in k for k in encoder):
        raise ForeignCheckpointError("layer-scale blocks (ls1/ls2.gamma) are not supported by this project's encoder")
    depth = _depth(encoder)
    required = [*STEM_KEYS, *(f"blocks.{i}.{p}" for i in range(depth) for p in BLOCK_PARAMS)]
    if layout == MAE:
        required += NORM_KEYS
    else:
        dim = encoder["cls_token"].shape[-1]
        if any(k in encoder for k in NORM_KEYS):
            unknown += [k for k in NORM_KEYS if k in encoder]  # the release's encoder has no final norm
        encoder["norm.weight"], encoder["norm.bias"] = torch.ones(dim), torch.zeros(dim)
    missing = [k for k in required if k not in encoder]
    extra = [k for k in encoder if k not in required and k not in NORM_KEYS]
    if unknown or missing or extra:
        raise ForeignCheckpointError(
            f"{layout} checkpoint does not map cleanly onto a timm ViT: "
            f"unexpected keys {sorted(unknown + extra)[:8]}, missing keys {missing[:8]}"
        )
    return encoder


def _depth(weights: dict) -> int:
    ids = {int(m.group(1)) for k in weights if (m := BLOCK_KEY.match(k))}
    return max(ids) + 1 if ids else 0


def heads_for(dim: int, arch: str | None = None) -> int:
    """The head count of a ViT of width ``dim`` (``arch``: the release's model name, e.g. ``sim_vit_base_patch16``)."""
    if arch:
        for size, heads in RELEASE_HEADS.items():
            if f"_{size}_" in f"_{arch}_".replace("vit_", "_"):
                return heads
    return WIDTH_HEADS.get(dim, max(1, dim // 64))


def encoder_config(weights: dict, num_heads: int | None = None, arch: str | None = None) -> Config:
    """A siamim config (the ``tiny`` preset's data and eval settings) whose encoder fits ``weights``.

    Args:
        weights: timm ViT keys: ``patch_embed.proj.weight [D, 3, p, p]``, ``pos_embed [1, 1 + G*G, D]``,
            ``blocks.<i>.mlp.fc1.weight [H, D]``, ...
        num_heads: attention heads (default :func:`heads_for`).
    Returns:
        the config with ``model.{patch_size, embed_dim, depth, num_heads, mlp_ratio}`` and
        ``data.img_size = G * p`` from the weights.
    """
    from siamim.config import load_config

    proj = weights["patch_embed.proj.weight"]
    dim, channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[-1])
    if channels != 3:
        raise ForeignCheckpointError(f"the patch embedding takes {channels} channels; this project feeds 3")
    tokens = int(weights["pos_embed"].shape[1]) - 1
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ForeignCheckpointError(f"pos_embed holds {tokens} patch positions, not a square grid")
    hidden = int(weights["blocks.0.mlp.fc1.weight"].shape[0])
    heads = num_heads or heads_for(dim, arch)
    if dim % heads:
        raise ForeignCheckpointError(f"{heads} heads do not divide the width {dim}; give num_heads")
    return load_config(
        "tiny",
        {
            "data.img_size": grid * patch,
            "model.patch_size": patch,
            "model.embed_dim": dim,
            "model.depth": _depth(weights),
            "model.num_heads": heads,
            "model.mlp_ratio": hidden / dim,
            "model.decoder_dim": dim,
            "model.decoder_heads": heads,
        },
    )


def _safe_load(path: Path):
    """``torch.load`` of tensors and plain containers (and ``argparse.Namespace``); None if it needs more."""
    import argparse

    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # needs full unpickling (ours: RNG states), or truncated: load_checkpoint says which
        return None


def foreign_state(obj: dict, where: str, num_heads: int | None = None) -> dict:
    """A loaded foreign checkpoint ``obj`` as a siamim encoder state (``kind: encoder``)."""
    from siamim.checkpoint import ENCODER_KIND, FORMAT_VERSION
    from siamim.config import to_dict

    model = obj.get("model", obj) if isinstance(obj, dict) else None
    layout = detect_layout(model) if isinstance(model, dict) else None
    if layout is None:
        raise ForeignCheckpointError(
            f"{where} is neither a siamim checkpoint nor an official SiameseIM / MAE checkpoint "
            "(no 'model' state dict with patch_embed, cls_token, pos_embed and blocks.*)"
        )
    args = obj.get("args")
    arch = getattr(args, "model", None) if args is not None else None
    weights = map_encoder(model, layout)
    cfg = encoder_config(weights, num_heads=num_heads, arch=arch)
    return {
        "format": FORMAT_VERSION,
        "kind": ENCODER_KIND,
        "step": 0,
        "config": to_dict(cfg),
        "model": weights,
        "source_layout": layout,
        "source_epoch": obj.get("epoch"),
    }


def read_checkpoint(path: str | os.PathLike, num_heads: int | None = None) -> dict:
    """Any checkpoint this project reads, as a siamim state (training state or ``kind: encoder``).

    ``path``: a siamim ``checkpoint.pt`` (or a directory holding one), a timm export folder
    (``config.json`` + ``model.safetensors``), or an official SiameseIM / MAE ``.pth`` file.
    ``num_heads``: for layouts whose weights do not fix it (foreign files, bare timm exports).
    """
    from siamim.checkpoint import CHECKPOINT_FILE, FORMAT_VERSION, load_checkpoint, verify_checkpoint
    from siamim.timm_export import is_timm_export, load_timm_export

    path = Path(path)
    if is_timm_export(path):
        state = load_timm_export(path)
        args = state.pop("model_args")
        if state["config"] is None:  # a bare timm export: the config comes from the weights
            from siamim.config import to_dict

            cfg = encoder_config(state["model"], num_heads=num_heads or args.get("num_heads"))
            state["config"] = to_dict(cfg)
        return state
    if path.is_dir():
        return load_checkpoint(path / CHECKPOINT_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    obj = _safe_load(path)
    if obj is None or (isinstance(obj, dict) and obj.get("format") == FORMAT_VERSION):
        return load_checkpoint(path)  # ours (RNG states need full unpickling), with its integrity check
    verify_checkpoint(path)
    return foreign_state(obj, str(path), num_heads=num_heads)
