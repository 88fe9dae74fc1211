import torch

from siamim.losses.cosine import cosine_loss


def test_cosine_loss_is_normalised_distance():
    p, z = torch.randn(6, 8), torch.randn(6, 8)
    cos = torch.nn.functional.cosine_similarity(p, z, dim=-1)
    assert torch.allclose(cosine_loss(p, z)["loss"], (2 - 2 * cos).mean(), atol=1e-6)
    assert torch.allclose(cosine_loss(3 * p, z)["loss"], cosine_loss(p, z)["loss"], atol=1e-6)
