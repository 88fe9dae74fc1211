import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import siamim.model.siamim as siamim_module
from siamim.config import load_config
from siamim.data.pipeline import build_loader, prepare_batch
from siamim.data.sources import build_source
from siamim.losses import compute_loss
from siamim.model.siamim import SiameseIM
from siamim.train.optim import build_optimizer
from siamim.train.step import TrainStep, wrap_for_training
from tests.conftest import SMALL
from tests.helpers import free_port
from tests.model.helpers import one_batch

CPU = torch.device("cpu")


def train_steps(overrides: list[str], rank: int, world: int, ddp: bool, steps: int = 2) -> dict[str, torch.Tensor]:
    """``steps`` training steps of the tiny model on ``rank``'s part of each global batch.

    Returns its parameters, online and EMA target (BatchNorm running statistics are buffers, kept per
    worker: DDP broadcasts rank 0's before each forward, and each worker then updates its own).
    """
    cfg = load_config("tiny", [*SMALL, *overrides])
    torch.manual_seed(cfg.train.seed)
    model = SiameseIM(cfg)
    optimizer = build_optimizer(model.online, cfg)
    wrap_for_training(model, cfg, CPU, world if ddp else 1)
    model.train()
    step = TrainStep(model, optimizer, None, cfg.optim.clip_grad)
    source = build_source("fashion_mnist", None, "train")
    for batch in build_loader(source, cfg, rank, world, 0, steps):
        step(prepare_batch(batch, CPU, cfg.data.img_size, source.mean, source.std), lr=1e-3, momentum=0.99)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _ddp_worker(rank, world, port, runs, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for name, overrides in runs.items():
            torch.save(train_steps(overrides, rank, world, ddp=True), f"{out_dir}/{name}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def distance(a: dict, b: dict) -> float:
    """L2 distance between two parameter sets."""
    assert a.keys() == b.keys()
    return sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a).sqrt().item()


def test_ddp_wrapped_in_place_equals_one_process_on_the_whole_batch(tmp_path):
    """2 gloo workers (DDP over ``model.online``, wrapped in place) for 2 steps of 16 + 16 images.

    ``model.norm=ln``: with BatchNorm each CPU worker normalises over its own half (no SyncBatchNorm
    on CPU), so only the LayerNorm model can equal one process on the 32 images; the BatchNorm model
    must still keep identical replicas.
    """
    runs = {"ln": ["model.norm=ln"], "bn": []}
    mp.spawn(_ddp_worker, args=(2, free_port(), runs, str(tmp_path)), nprocs=2, join=True)
    for name in runs:
        r0, r1 = (torch.load(tmp_path / f"{name}-rank{r}.pt") for r in range(2))
        assert max_diff(r0, r1) == 0.0, name  # DDP: every replica applies the same averaged gradient
    ddp = torch.load(tmp_path / "ln-rank0.pt")
    single = train_steps(runs["ln"], 0, 1, ddp=False)
    unsynced = train_steps(runs["ln"], 0, 2, ddp=False)  # rank 0's half alone, no gradient averaging
    start = train_steps(runs["ln"], 0, 1, ddp=False, steps=0)
    moved = distance(start, single)
    gap, control = distance(ddp, single) / moved, distance(unsynced, single) / moved
    # Relative to how far the 2 steps moved the parameters. Measured: gap 3.2e-5 (rounding, mostly in the
    # attention key biases, whose true gradient is 0 and which AdamW turns into lr-sized noise: max
    # abs 9e-6 there, 5e-7 elsewhere), control 0.45. Tolerance 1e-3: 30x the gap, 450x below the control.
    assert gap < 1e-3, (gap, control)
    assert control > 0.1, control


def test_bf16_autocast_step_on_cpu(small_cfg, monkeypatch):
    """One step of the tiny model under CPU bf16 autocast: finite, close to fp32, loss computed in fp32."""
    cfg = small_cfg()
    batch = one_batch(cfg)
    calls = []

    def spy(kind, pred, target, neg_weight):
        out = compute_loss(kind, pred, target, neg_weight)
        calls.append(
            {
                "autocast": torch.is_autocast_enabled("cpu"),
                "pred": pred.detach(),
                "target": target,
                "loss": out["loss"].detach(),
            }
        )
        return out

    monkeypatch.setattr(siamim_module, "compute_loss", spy)
    out = {}
    for amp in (None, torch.bfloat16):
        torch.manual_seed(cfg.train.seed)
        model = SiameseIM(cfg).train()
        out[amp] = TrainStep(model, build_optimizer(model.online, cfg), amp, cfg.optim.clip_grad)(batch, 1e-3, 0.99)
    fp32, bf16 = out[None], out[torch.bfloat16]
    assert torch.isfinite(bf16["loss"]) and torch.isfinite(bf16["grad_norm"])
    gap = abs(bf16["loss"].item() - fp32["loss"].item()) / fp32["loss"].item()
    # Measured: relative gap 3.4e-4 (bf16 keeps 8 mantissa bits: ~4e-3 per rounding). Bound 1e-2: ~30x.
    assert gap < 1e-2, gap
    assert not torch.equal(bf16["loss"], fp32["loss"])  # autocast did change the forward
    call = calls[1]
    assert call["autocast"] and call["pred"].dtype == torch.bfloat16  # the model ran in bf16 ...
    assert call["loss"].dtype == torch.float32  # ... the loss in fp32, autocast off inside it:
    assert torch.equal(
        call["loss"], compute_loss(cfg.loss.type, call["pred"], call["target"], cfg.loss.neg_weight)["loss"]
    )
    # The same formula left under autocast runs its matmuls in bf16 and differs, so the check can fail.
    p, z = call["pred"].float().flatten(0, 1), call["target"].float().flatten(0, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        corr = z.T @ z / z.shape[0]
        naive = ((p - z).pow(2).sum(-1).mean() + cfg.loss.neg_weight * ((p @ corr) * p).sum(-1).mean()) / p.shape[-1]
    assert not torch.equal(naive.float(), call["loss"])


def test_sync_batchnorm_converts_both_branches_and_keeps_the_parameters(small_cfg):
    """The release converts the whole model: the EMA target's BatchNorms too (conversion runs on CPU;
    SyncBatchNorm's forward needs CUDA, so only multi-GPU CUDA runs convert)."""
    from siamim.train.step import convert_sync_batchnorm, uses_sync_batchnorm

    cfg = small_cfg()
    model = SiameseIM(cfg)
    bn_names = {
        branch: {n for n, m in getattr(model, branch).named_modules() if isinstance(m, torch.nn.BatchNorm1d)}
        for branch in ("online", "target")
    }
    assert bn_names["online"] and bn_names["target"]
    optimizer = build_optimizer(model.online, cfg)
    params_before = [id(p) for g in optimizer.param_groups for p in g["params"]]
    online_before = {id(p) for p in model.online.parameters()}
    target_before = [id(p) for p in model.target.parameters()]
    state_keys = set(model.state_dict())
    convert_sync_batchnorm(model)
    for branch, names in bn_names.items():
        modules = dict(getattr(model, branch).named_modules())
        assert all(isinstance(modules[n], torch.nn.SyncBatchNorm) for n in names), branch
        assert not any(type(m) is torch.nn.BatchNorm1d for m in modules.values()), branch
    online_ids = {id(p) for p in model.online.parameters()}
    assert set(params_before) <= online_ids  # the optimiser still holds the live parameters
    tgt, src = model.target_pairs()
    # The EMA pairs are the very tensors from before the conversion (online ones the optimiser steps, target ones
    # the checkpoint holds), not copies a conversion could have made.
    assert {id(o) for o in src} <= online_before and [id(p) for p in model.target.parameters()] == target_before
    assert {id(t) for t in tgt} <= set(target_before) and all(t.shape == o.shape for t, o in zip(tgt, src, strict=True))
    assert set(model.state_dict()) == state_keys  # checkpoints keep their names

    cuda = torch.device("cuda", 0)
    assert uses_sync_batchnorm(cfg, cuda, 2)
    assert not uses_sync_batchnorm(cfg, cuda, 1) and not uses_sync_batchnorm(cfg, CPU, 2)
    assert not uses_sync_batchnorm(small_cfg("model.norm=ln"), cuda, 2)
