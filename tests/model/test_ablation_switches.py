"""Each ablation switch does what docs/method.md says (rows a-k)."""

import torch

import siamim.model.siamim as siamim_module
from siamim.model.siamim import SiameseIM
from tests.model.helpers import one_batch


def _patches_by_loop(images: torch.Tensor, p: int) -> torch.Tensor:
    """Oracle: each patch's pixels (row, col, channel order), standardised with its own mean / unbiased std."""
    b, c, s, _ = images.shape
    out = []
    for r in range(s // p):
        for col in range(s // p):
            patch = images[:, :, r * p : (r + 1) * p, col * p : (col + 1) * p].permute(0, 2, 3, 1).reshape(b, -1)
            out.append((patch - patch.mean(1, keepdim=True)) / (patch.var(1, keepdim=True) + 1e-6).sqrt())
    return torch.stack(out, dim=1)  # [B, L, p*p*c]


def _spy_loss(monkeypatch) -> dict:
    seen = {}
    real = siamim_module.compute_loss

    def spy(kind, pred, target, neg_weight):
        seen.update(kind=kind, pred=pred.detach(), target=target.detach())
        return real(kind, pred, target, neg_weight)

    monkeypatch.setattr(siamim_module, "compute_loss", spy)
    return seen


def test_pixel_target_is_the_normalised_view2_patches_at_the_masked_positions(small_cfg, monkeypatch):
    cfg = small_cfg("model.target=pixel", "views.different_views=false", "loss.type=l2", "mask.type=random")
    batch = one_batch(cfg)
    seen = _spy_loss(monkeypatch)
    SiameseIM(cfg)(batch)
    p = cfg.model.patch_size
    expected = _patches_by_loop(batch["view2"], p)  # [B, L, 3*p*p]
    expected = torch.stack([expected[i, batch["mask"][i]] for i in range(len(expected))])  # masked patches only
    assert seen["target"].shape == (cfg.train.batch_size, cfg.num_masked, 3 * p * p)
    assert torch.allclose(seen["target"], expected, atol=1e-5)
    assert seen["pred"].shape == seen["target"].shape and seen["kind"] == "l2"


def test_pixel_target_across_views_predicts_every_view2_patch(small_cfg, monkeypatch):
    cfg = small_cfg("model.target=pixel", "loss.type=l2")
    batch = one_batch(cfg)
    seen = _spy_loss(monkeypatch)
    model = SiameseIM(cfg)
    model(batch)
    assert model.target is None and model.target_pairs() == ([], [])
    assert torch.allclose(seen["target"], _patches_by_loop(batch["view2"], cfg.model.patch_size), atol=1e-5)


def test_moco_like_encoder_sees_all_tokens_with_mask_tokens_and_the_view2_queries(small_cfg):
    cfg = small_cfg("model.heads=moco_like")
    model = SiameseIM(cfg)
    batch = one_batch(cfg)
    seen = {}
    hook = model.online.encoder.blocks[0].register_forward_hook(lambda m, args, out: seen.update(x=args[0].detach()))
    model(batch)
    hook.remove()
    enc, n = model.online.encoder, cfg.grid_size**2
    x = seen["x"]  # [B, 1 + L + L, D]: cls, every view-1 patch, every view-2 query
    assert x.shape == (cfg.train.batch_size, 1 + n + n, cfg.model.embed_dim)
    with torch.no_grad():
        patches = enc.patch_embed(batch["view1"]) + enc.pos_embed[:, 1:]
        masked_token = model.online.mask_token[0, 0] + enc.pos_embed[0, 1:]  # [L, D]
    mask = batch["mask"]
    assert torch.allclose(x[:, 1 : 1 + n][mask], masked_token.expand(len(mask), -1, -1)[mask], atol=1e-6)
    assert torch.allclose(x[:, 1 : 1 + n][~mask], patches[~mask], atol=1e-6)
    with torch.no_grad():
        from siamim.data.geometry import view2_patch_centres

        queries = model.online.mask_token + model.online.rel_pos(
            view2_patch_centres(batch["geometry"], cfg.grid_size), batch["geometry"]
        )
    assert torch.allclose(x[:, 1 + n :], queries, atol=1e-6)


def test_moco_like_same_view_predicts_the_masked_positions(small_cfg, monkeypatch):
    cfg = small_cfg("model.heads=moco_like", "views.different_views=false", "mask.type=random")
    model = SiameseIM(cfg)
    assert model.online.rel_pos is None  # identity geometry: no queries appended
    seen = _spy_loss(monkeypatch)
    model(one_batch(cfg))
    assert seen["pred"].shape == (cfg.train.batch_size, cfg.num_masked, cfg.model.decoder_dim)


def test_global_loss_sees_one_vector_per_image(small_cfg, monkeypatch):
    for pool in ("cls", "mean"):
        cfg = small_cfg("model.heads=moco_like", "loss.scope=global", f"loss.global_pool={pool}")
        seen = _spy_loss(monkeypatch)
        out = SiameseIM(cfg)(one_batch(cfg))
        assert seen["pred"].shape == seen["target"].shape == (cfg.train.batch_size, cfg.model.decoder_dim)
        assert torch.isfinite(out["loss"])
        # targets are LayerNorm-normalised vectors
        assert torch.allclose(seen["target"].mean(-1), torch.zeros(cfg.train.batch_size), atol=1e-5)
