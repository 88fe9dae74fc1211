import torch

from siamim.eval.baselines import baseline_representation
from siamim.eval.representation import extract, extract_many
from tests.eval.helpers import cfg, real_set


def test_pixel_tokens_are_the_patches_in_row_major_order():
    rep = baseline_representation("pixels", cfg())
    x = torch.randn(2, 3, 32, 32)
    tok = rep(x, "tokens")  # [2, 64, 48]
    assert tok.shape == (2, 64, 48)
    r, c = 2, 5  # patch (row 2, column 5) is token 2 * 8 + 5
    assert torch.equal(tok[1, r * 8 + c], x[1, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4].reshape(-1))
    assert torch.equal(rep(x, "cls"), x.flatten(1))
    torch.testing.assert_close(rep(x, "mean"), tok.mean(1))


def test_encoder_pools_come_from_forward_features_and_one_pass_equals_separate_passes():
    rep = baseline_representation("random", cfg())
    images = real_set("test", 20)
    many = extract_many(rep, images, ("cls", "mean", "tokens"), batch_size=8)
    with torch.no_grad():
        ref = rep.encoder.eval().forward_features(images.batch(0, 20))
    torch.testing.assert_close(many["cls"], ref[:, 0])
    torch.testing.assert_close(many["mean"], ref[:, 1:].mean(1))
    torch.testing.assert_close(extract(rep, images, "tokens", batch_size=7), many["tokens"])


def test_random_baseline_is_seeded():
    a = baseline_representation("random", cfg(), seed=3).encoder.state_dict()
    b = baseline_representation("random", cfg(), seed=3).encoder.state_dict()
    c = baseline_representation("random", cfg(), seed=4).encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])
