import os
import socket
import typing

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from siamim.config import LossConfig
from siamim.losses import LOSSES, compute_loss, cosine_loss, l2_loss, unigrad_loss


def reference_unigrad(p, z, lam):
    """docs/method.md formula written out naively (N x N allowed here)."""
    n, d = p.shape
    positive = sum(((p[k] - z[k]) ** 2).sum() for k in range(n)) / n
    corr = sum(torch.outer(z[k], z[k]) for k in range(n)) / n
    negative = torch.diagonal(p @ corr @ p.T).mean()
    return (positive + lam * negative) / d


def test_unigrad_equals_formula():
    gen = torch.Generator().manual_seed(0)
    p, z = torch.randn(2, 7, 16, generator=gen, dtype=torch.float64).float(), torch.randn(2, 7, 16, generator=gen)
    out = unigrad_loss(p, z, 0.02)
    ref = reference_unigrad(p.reshape(-1, 16).double(), z.reshape(-1, 16).double(), 0.02)
    assert torch.allclose(out["loss"].double(), ref, rtol=1e-5)
    assert out["loss"].dtype == torch.float32
    # The negative weight matters: lambda = 0 gives the positive term alone.
    assert not torch.allclose(unigrad_loss(p, z, 0.0)["loss"], out["loss"])


def test_unigrad_is_fp32_under_bf16_inputs():
    p, z = torch.randn(10, 8).bfloat16(), torch.randn(10, 8).bfloat16()
    assert unigrad_loss(p, z)["loss"].dtype == torch.float32


def test_unigrad_gradient_flows_to_pred_only():
    p = torch.randn(5, 8, requires_grad=True)
    z = torch.randn(5, 8, requires_grad=True)
    unigrad_loss(p, z)["loss"].backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


def test_cosine_loss_is_normalised_distance():
    p, z = torch.randn(6, 8), torch.randn(6, 8)
    cos = torch.nn.functional.cosine_similarity(p, z, dim=-1)
    assert torch.allclose(cosine_loss(p, z)["loss"], (2 - 2 * cos).mean(), atol=1e-6)
    assert torch.allclose(cosine_loss(3 * p, z)["loss"], cosine_loss(p, z)["loss"], atol=1e-6)


def test_l2_is_unigrad_without_negative_term():
    gen = torch.Generator().manual_seed(1)
    p, z = torch.randn(3, 5, 16, generator=gen), torch.randn(3, 5, 16, generator=gen)
    assert torch.allclose(l2_loss(p, z)["loss"], unigrad_loss(p, z, 0.0)["loss"], rtol=1e-6)
    assert torch.allclose(l2_loss(p, z)["loss"], ((p - z) ** 2).mean(), rtol=1e-6)
    # Scale matters for MSE (unlike the cosine form).
    assert not torch.allclose(l2_loss(3 * p, z)["loss"], l2_loss(p, z)["loss"])


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_loss_is_fp32_under_cpu_bf16_autocast(kind):
    """Autocast would run the matmuls in bf16; the losses disable it, so the value equals the fp32 one."""
    gen = torch.Generator().manual_seed(2)
    p, z = torch.randn(256, 64, generator=gen), torch.randn(256, 64, generator=gen) * 3 + 1
    expected = compute_loss(kind, p, z, 0.02)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = compute_loss(kind, p, z, 0.02)["loss"]
        # The test can fail: under this autocast a plain matmul does drop to bf16.
        assert (z.T @ z).dtype == torch.bfloat16
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_config_choices_match_the_registry():
    assert set(typing.get_args(typing.get_type_hints(LossConfig)["type"])) == set(LOSSES)


def test_dispatch_and_shape_errors():
    with pytest.raises(ValueError, match="unigrad"):
        compute_loss("huber", torch.zeros(2, 4), torch.zeros(2, 4), 0.02)
    with pytest.raises(ValueError, match="differ"):
        unigrad_loss(torch.zeros(2, 4), torch.zeros(3, 4))


def _worker(rank, world, port, p, z, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    half = p.shape[0] // world
    mine = slice(rank * half, (rank + 1) * half)
    pred = p[mine].clone().requires_grad_(True)
    loss = unigrad_loss(pred, z[mine], 0.02)["loss"]
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": pred.grad}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_equal_single_process(tmp_path):
    gen = torch.Generator().manual_seed(3)
    p, z = torch.randn(64, 16, generator=gen), torch.randn(64, 16, generator=gen) * 2 + 0.5
    mp.spawn(_worker, args=(2, _free_port(), p, z, str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    pred = p.clone().requires_grad_(True)
    full = unigrad_loss(pred, z, 0.02)["loss"]
    full.backward()
    # DDP averages per-worker losses/gradients: that average must equal the whole-batch result.
    assert torch.allclose((parts[0]["loss"] + parts[1]["loss"]) / 2, full.detach(), rtol=1e-5)
    grads = torch.cat([parts[0]["grad"], parts[1]["grad"]]) / 2
    assert torch.allclose(grads, pred.grad, rtol=1e-4, atol=1e-7)
    # Without the all-reduce the halves' correlations differ, so the test can fail.
    local = (unigrad_loss(p[:32], z[:32])["loss"] + unigrad_loss(p[32:], z[32:])["loss"]) / 2
    assert not torch.allclose(local, full.detach(), rtol=1e-5)
