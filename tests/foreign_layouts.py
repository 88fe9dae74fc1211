"""Small checkpoints in the official SiameseIM and facebookresearch/mae layouts, and a reference ViT forward.

Key names and shapes are those the released code's modules register (read from
OpenGVLab/Siamese-Image-Modeling ``models_sim.py`` / ``models_vit.py`` and
facebookresearch/mae ``models_mae.py``, built on timm's ``Block``/``PatchEmbed``),
saved as their ``util/misc.py`` ``save_model`` does: ``{"model", "optimizer",
"epoch", "scaler", "args"}``. Values are random; :func:`reference_features` is an
independent re-statement of those encoders' forward (patch conv, sin-cos position, pre-norm
blocks), so a mapping that put a tensor in the wrong place would change the output.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


def _block(prefix: str, d: int, hidden: int, gen: torch.Generator, bn: bool = False) -> dict:
    r = lambda *s: 0.05 * torch.randn(*s, generator=gen)  # noqa: E731
    out = {}
    for norm in ("norm1", "norm2"):
        if bn:  # models_sim.PermuteBN: a BatchNorm1d under .bn
            out |= {
                f"{prefix}{norm}.bn.weight": 1 + r(d),
                f"{prefix}{norm}.bn.bias": r(d),
                f"{prefix}{norm}.bn.running_mean": r(d),
                f"{prefix}{norm}.bn.running_var": 1 + r(d).abs(),
                f"{prefix}{norm}.bn.num_batches_tracked": torch.tensor(7),
            }
        else:
            out |= {f"{prefix}{norm}.weight": 1 + r(d), f"{prefix}{norm}.bias": r(d)}
    out |= {
        f"{prefix}attn.qkv.weight": r(3 * d, d),
        f"{prefix}attn.qkv.bias": r(3 * d),
        f"{prefix}attn.proj.weight": r(d, d),
        f"{prefix}attn.proj.bias": r(d),
        f"{prefix}mlp.fc1.weight": r(hidden, d),
        f"{prefix}mlp.fc1.bias": r(hidden),
        f"{prefix}mlp.fc2.weight": r(d, hidden),
        f"{prefix}mlp.fc2.bias": r(d),
    }
    return out


def _stem(prefix: str, d: int, patch: int, tokens: int, gen, pos: bool = True) -> dict:
    r = lambda *s: 0.05 * torch.randn(*s, generator=gen)  # noqa: E731
    out = {f"{prefix}patch_embed.proj.weight": r(d, 3, patch, patch), f"{prefix}patch_embed.proj.bias": r(d)}
    out[f"{prefix}cls_token"] = r(1, 1, d)
    if pos:
        out[f"{prefix}pos_embed"] = r(1, tokens + 1, d)
    return out


def _encoder(prefix: str, dim, depth, mlp, patch, tokens, gen, pos: bool = True) -> dict:
    """Patch embedding, cls token (and position embedding) plus ``depth`` ViT blocks under ``prefix``."""
    sd = _stem(prefix, dim, patch, tokens, gen, pos=pos)
    for i in range(depth):
        sd |= _block(f"{prefix}blocks.{i}.", dim, mlp * dim, gen)
    return sd


def official_siamim_checkpoint(
    dim=128, depth=2, patch=4, img=16, dec=32, proj_depth=2, pred_depth=2, mlp=4, seed=0
) -> dict:
    """``SiameseIMViT(loss_type='sim', use_abs_pos_emb, projector_depth, predictor_depth)`` saved by ``save_model``."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: 0.05 * torch.randn(*s, generator=gen)  # noqa: E731
    tokens = (img // patch) ** 2
    sd = _encoder("", dim, depth, mlp, patch, tokens, gen)
    sd |= {"decoder_embed.weight": r(dec, dim), "decoder_embed.bias": r(dec), "mask_token": r(1, 1, dec)}
    sd["decoder_pos_embed"] = r(1, tokens + 1, dec)
    for i in range(proj_depth):
        sd |= _block(f"projector_decoder_blocks.{i}.", dec, mlp * dec, gen, bn=True)
    for i in range(pred_depth):
        sd |= _block(f"predictor_decoder_blocks.{i}.", dec, mlp * dec, gen, bn=True)
    sd |= {"decoder_pred.weight": r(dec, dec), "decoder_pred.bias": r(dec)}
    sd |= {"decoder_pos_mlp.weight": r(dec, 2 * dec), "decoder_pos_mlp.bias": r(dec)}
    # build_momentum_target: the EMA copies (teacher_norm has no affine parameters: no keys)
    sd |= _encoder("mm_", dim, depth, mlp, patch, tokens, gen, pos=False)
    sd |= {"mm_decoder_embed.weight": r(dec, dim), "mm_decoder_embed.bias": r(dec), "mm_mask_token": r(1, 1, dec)}
    for i in range(proj_depth):
        sd |= _block(f"mm_projector_decoder_blocks.{i}.", dec, mlp * dec, gen, bn=True)
    args = argparse.Namespace(model="sim_vit_tiny_patch4", decoder_embed_dim=dec, loss_type="sim", init_values=None)
    return {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 1599, "scaler": {}, "args": args}


def mae_checkpoint(dim=128, depth=2, patch=4, img=16, dec=64, dec_depth=2, mlp=4, seed=0, encoder_only=False) -> dict:
    """``MaskedAutoencoderViT`` as ``main_pretrain.py`` saves it (``encoder_only``: the released encoder files)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: 0.05 * torch.randn(*s, generator=gen)  # noqa: E731
    tokens = (img // patch) ** 2
    sd = _encoder("", dim, depth, mlp, patch, tokens, gen)
    sd |= {"norm.weight": 1 + r(dim), "norm.bias": r(dim)}
    if encoder_only:
        return {"model": sd}
    sd |= {"decoder_embed.weight": r(dec, dim), "decoder_embed.bias": r(dec), "mask_token": r(1, 1, dec)}
    sd["decoder_pos_embed"] = r(1, tokens + 1, dec)
    for i in range(dec_depth):
        sd |= _block(f"decoder_blocks.{i}.", dec, mlp * dec, gen)
    sd |= {"decoder_norm.weight": 1 + r(dec), "decoder_norm.bias": r(dec)}
    sd |= {"decoder_pred.weight": r(patch * patch * 3, dec), "decoder_pred.bias": r(patch * patch * 3)}
    args = argparse.Namespace(model="mae_vit_tiny_patch4", norm_pix_loss=True)
    return {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 799, "scaler": {}, "args": args}


def reference_features(sd: dict, x: torch.Tensor, heads: int, final_norm: bool) -> torch.Tensor:
    """The release's encoder on ``x [B, 3, S, S]`` -> ``[B, 1 + L, D]``, then a final LayerNorm (eps 1e-6).

    ``final_norm``: MAE's trained ``norm``; otherwise (SiameseIM: no norm in the release) a
    LayerNorm without affine, which is what timm's 1 / 0 norm computes.
    """
    w = sd["patch_embed.proj.weight"]
    t = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)  # [B, L, D]
    pos = sd["pos_embed"]
    t = torch.cat([(sd["cls_token"] + pos[:, :1]).expand(x.shape[0], -1, -1), t + pos[:, 1:]], dim=1)
    b, n, d = t.shape
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        p = lambda k: sd[f"blocks.{i}.{k}"]  # noqa: E731, B023
        h = F.layer_norm(t, (d,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        qkv = (h @ p("attn.qkv.weight").T + p("attn.qkv.bias")).reshape(b, n, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, N, d/heads]
        attn = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        t = t + (attn @ v).transpose(1, 2).reshape(b, n, d) @ p("attn.proj.weight").T + p("attn.proj.bias")
        h = F.layer_norm(t, (d,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        h = F.gelu(h @ p("mlp.fc1.weight").T + p("mlp.fc1.bias"))
        t = t + h @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
        i += 1
    if final_norm:
        return F.layer_norm(t, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return F.layer_norm(t, (d,), eps=1e-6)
