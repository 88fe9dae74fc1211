import torch

from siamim.losses.l2 import l2_loss
from siamim.losses.unigrad import unigrad_loss


def test_l2_is_unigrad_without_negative_term():
    gen = torch.Generator().manual_seed(1)
    p, z = torch.randn(3, 5, 16, generator=gen), torch.randn(3, 5, 16, generator=gen)
    assert torch.allclose(l2_loss(p, z)["loss"], unigrad_loss(p, z, 0.0)["loss"], rtol=1e-6)
    assert torch.allclose(l2_loss(p, z)["loss"], ((p - z) ** 2).mean(), rtol=1e-6)
    # Scale matters for MSE (unlike the cosine form).
    assert not torch.allclose(l2_loss(3 * p, z)["loss"], l2_loss(p, z)["loss"])
