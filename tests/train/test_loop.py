import io
import math

import pytest
import torch

from siamim.checkpoint import load_checkpoint
from siamim.train.loop import pretrain
from siamim.train.schedules import lr_at, momentum_at


def snapshot(state):
    """Serialise like a real saver does (the state holds live tensors that training keeps updating)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def collect(cfg, **kwargs):
    losses, states = {}, {}

    def reporter(m):
        losses[int(m["step"])] = m["loss"]

    def saver(state, step):
        states[step] = snapshot(state)

    result = pretrain(cfg, reporter=reporter, checkpoint_saver=saver, verbose=False, **kwargs)
    return losses, states, result


def test_loss_goes_down_on_fashion_mnist(small_cfg):
    cfg = small_cfg("train.max_steps=200", "optim.blr=2e-3", "train.epochs=1", "data.train_subset=6400")
    losses, _, result = collect(cfg)
    assert result["step"] == 200 and len(losses) == 200
    first = sum(losses[s] for s in range(1, 21)) / 20
    last = sum(losses[s] for s in range(181, 201)) / 20
    assert last < 0.8 * first, (first, last)


@pytest.mark.parametrize("heads", ["", "model.heads=moco_like model.norm=ln", "model.heads=moco_like model.norm=bn"])
def test_resume_is_bit_exact(small_cfg, heads):
    """Also for rows e and h's MoCo-like heads (docs/results.md, "Reproducibility across sittings")."""
    cfg = small_cfg("train.max_steps=6", "train.checkpoint_every=3", "data.train_subset=640", *heads.split())
    full, states, _ = collect(cfg)
    assert sorted(states) == [3, 6]
    resumed, _, result = collect(cfg, resume_state=states[3])
    assert sorted(resumed) == [4, 5, 6] and result["step"] == 6
    for step in (4, 5, 6):
        assert resumed[step] == full[step]  # bit-exact on CPU


def test_default_saver_writes_loadable_checkpoint(small_cfg, tmp_path):
    cfg = small_cfg("train.max_steps=2", "data.train_subset=320")
    result = pretrain(cfg, verbose=False)
    state = load_checkpoint(f"{cfg.train.output_dir}/checkpoint.pt")
    assert state["step"] == 2 == result["step"]
    assert state["config"]["train"]["max_steps"] == 2


def test_nan_loss_names_the_step(small_cfg):
    cfg = small_cfg("train.max_steps=5", "optim.blr=1e30", "optim.clip_grad=null", "data.train_subset=320")
    with pytest.raises(FloatingPointError, match=r"at step \d+"):
        pretrain(cfg, verbose=False)


def test_a_crash_mid_run_resumes_from_the_last_checkpoint(small_cfg):
    """A callback that raises (how the platform injects faults) stops the run; its last checkpoint resumes it."""
    cfg = small_cfg("train.max_steps=4", "train.checkpoint_every=2", "data.train_subset=320")
    states = {}

    def crash(metrics):
        if metrics["step"] == 3:
            raise RuntimeError("worker crashed")

    with pytest.raises(RuntimeError, match="worker crashed"):
        pretrain(cfg, reporter=crash, checkpoint_saver=lambda s, k: states.__setitem__(k, snapshot(s)), verbose=False)
    assert sorted(states) == [2]
    assert pretrain(cfg, resume_state=states[2], checkpoint_saver=lambda s, k: None, verbose=False)["step"] == 4


def test_schedules():
    assert lr_at(0, 100, 10, 1.0) == 0.0
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert momentum_at(0, 100, 0.995) == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.995) == pytest.approx(1.0)
    assert momentum_at(50, 100, 0.995) == pytest.approx(1 - 0.005 * (1 + math.cos(math.pi / 2)) / 2)


def _ddp_worker(rank, world, port, cfg_dict, out):
    import os

    import torch.distributed as dist

    from siamim.config import from_dict

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    result = pretrain(from_dict(cfg_dict), checkpoint_saver=lambda s, k: None, verbose=False)
    torch.save({k: v.clone() for k, v in result["encoder"].state_dict().items()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_runs_unchanged_under_gloo_process_group(small_cfg, tmp_path):
    import torch.multiprocessing as mp

    from siamim.config import to_dict
    from tests.helpers import free_port

    cfg = small_cfg("train.max_steps=3", "data.train_subset=320", "run.num_workers=2")
    mp.spawn(_ddp_worker, args=(2, free_port(), to_dict(cfg), str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # DDP kept the replicas identical
    init = small_cfg("train.max_steps=3", "data.train_subset=320")
    from siamim.model.siamim import SiameseIM

    torch.manual_seed(init.train.seed)
    fresh = SiameseIM(init).online.encoder.state_dict()
    assert not torch.equal(fresh["blocks.0.attn.qkv.weight"], a["blocks.0.attn.qkv.weight"])  # it trained


def collect_lr(cfg, **kwargs):
    lrs, moms, states = {}, {}, {}

    def reporter(m):
        lrs[int(m["step"])], moms[int(m["step"])] = m["lr"], m["momentum"]

    def saver(state, step):
        states[step] = snapshot(state)

    pretrain(cfg, reporter=reporter, checkpoint_saver=saver, verbose=False, **kwargs)
    return lrs, moms, states


def test_growing_the_plan_on_resume_rewarms_to_the_replanned_cosine(small_cfg):
    """A finished 4-step plan resumed with an 8-step plan: lr ramps from its last value to the new cosine, no jump."""
    base = ["data.train_subset=640", "optim.warmup_epochs=0.1", "optim.blr=1e-3", "train.checkpoint_every=1"]
    # 640 images / batch 32 = 20 steps per epoch: warm-up 2 steps; epochs 0.2 -> 4 steps, 0.4 -> 8 steps
    first, _, states = collect_lr(small_cfg(*base, "train.epochs=0.2"))
    peak = 1e-3 * 32 / 256
    assert states[4]["plan"] == {"steps_per_epoch": 20, "total_steps": 4, "warmup_steps": 2, "restarts": []}
    last_lr = first[4]  # loop step index 3 of the 4-step plan: half way down its cosine
    assert last_lr == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 1 / 2)))

    longer = small_cfg(*base, "train.epochs=0.4")
    lrs, moms, ext_states = collect_lr(longer, resume_state=states[4])
    assert sorted(lrs) == [5, 6, 7, 8]  # continues at the next step

    def curve(i):  # the cosine of an 8-step plan with a 2-step warm-up, at loop step index i
        return peak * 0.5 * (1 + math.cos(math.pi * (i - 2) / (8 - 2)))

    # ramp over the warm-up length (2 steps) from the last lr to the re-planned curve, then the curve itself
    assert lrs[5] == pytest.approx(last_lr + (curve(4) - last_lr) * 0.5)
    assert lrs[6] == pytest.approx(curve(5)) and lrs[8] == pytest.approx(curve(7))
    assert moms[5] == pytest.approx(momentum_at(4, 8, longer.optim.ema_m0))  # EMA: the re-planned cosine
    assert ext_states[8]["plan"]["restarts"] == [
        {"step": 4, "from_lr": pytest.approx(last_lr), "steps": 2, "old_total_steps": 4}
    ]

    # stopped inside the ramp and resumed again: the restart is remembered, the lr is exactly the same
    again, _, _ = collect_lr(longer, resume_state=ext_states[5])
    assert again == {k: v for k, v in lrs.items() if k > 5}


def test_unchanged_plan_on_resume_has_no_restart(small_cfg):
    cfg = small_cfg("data.train_subset=640", "train.max_steps=4", "train.checkpoint_every=2", "train.epochs=0.4")
    full, _, states = collect_lr(cfg)
    resumed, _, after = collect_lr(cfg, resume_state=states[2])
    assert resumed == {k: v for k, v in full.items() if k > 2}
    assert after[4]["plan"]["restarts"] == []
