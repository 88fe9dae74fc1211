import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from siamim.losses.unigrad import unigrad_loss
from tests.helpers import free_port


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


def test_two_gloo_processes_equal_single_process(tmp_path):
    gen = torch.Generator().manual_seed(3)
    p, z = torch.randn(64, 16, generator=gen), torch.randn(64, 16, generator=gen) * 2 + 0.5
    mp.spawn(_worker, args=(2, free_port(), p, z, str(tmp_path)), nprocs=2, join=True)
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
