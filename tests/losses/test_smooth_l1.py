import torch

from siamim.losses.l2 import l2_loss
from siamim.losses.smooth_l1 import smooth_l1_loss


def test_smooth_l1_equals_the_formula():
    gen = torch.Generator().manual_seed(4)
    p, z = torch.randn(3, 5, 16, generator=gen) * 2, torch.randn(3, 5, 16, generator=gen)
    e = (p - z).double()
    expected = torch.where(e.abs() < 1.0, 0.5 * e**2, e.abs() - 0.5).mean()
    # Both regimes occur in this draw, so a purely quadratic or purely linear loss fails.
    assert (e.abs() < 1).any() and (e.abs() >= 1).any()
    out = smooth_l1_loss(p, z)
    assert out["loss"].dtype == torch.float32
    assert torch.allclose(out["loss"].double(), expected, rtol=1e-6)


def test_smooth_l1_is_half_l2_for_small_errors_and_grows_linearly():
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(8, 16, generator=gen)
    small = z + 0.1 * torch.randn(8, 16, generator=gen)  # every |error| < beta = 1
    assert torch.allclose(smooth_l1_loss(small, z)["loss"], l2_loss(small, z)["loss"] / 2, rtol=1e-6)
    # Far outside beta the loss is |e| - 1/2: a uniform error of 10 gives 9.5, where l2 gives 100.
    assert torch.allclose(smooth_l1_loss(z + 10, z)["loss"], torch.tensor(9.5), rtol=1e-6)


def test_smooth_l1_gradient_flows_to_pred_only():
    p = torch.randn(5, 8, requires_grad=True)
    z = torch.randn(5, 8, requires_grad=True)
    smooth_l1_loss(p, z)["loss"].backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None
