"""The online kNN monitor: a fixed subset, a value per monitored step, and the same training with it on or off."""

from __future__ import annotations

import pytest
import torch

from siamim.eval.monitor import METRIC, RANK_METRIC, KnnMonitor, effective_rank
from siamim.model.siamim import SiameseIM
from siamim.train.loop import pretrain

MONITOR = ["eval.monitor_bank=200", "eval.monitor_queries=100"]


def test_monitor_is_deterministic_on_its_fixed_subset_and_keeps_the_mode(small_cfg):
    cfg = small_cfg(*MONITOR)
    monitor = KnnMonitor(cfg)
    assert len(monitor.sets["train"]) == pytest.approx(200, abs=10) and len(monitor.sets["test"]) == pytest.approx(
        100, abs=10
    )
    assert len(set(monitor.sets["train"].labels.tolist())) == 10  # class-balanced
    torch.manual_seed(0)
    encoder = SiameseIM(cfg).online.encoder
    encoder.train()
    first = monitor(encoder)
    assert 10.0 < first[METRIC] <= 100.0 and encoder.training  # above chance; left in train mode
    assert first[RANK_METRIC] > 1.0 and first[RANK_METRIC] <= cfg.model.embed_dim
    assert monitor(encoder) == first and monitor.seconds > 0
    assert (
        KnnMonitor(small_cfg(*MONITOR, "eval.seed=1")).sets["test"].labels.tolist()
        != monitor.sets["test"].labels.tolist()
    )


def test_effective_rank_of_features_of_known_rank():
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 64, generator=gen, dtype=torch.float64))[0]
    coords = torch.linalg.qr(torch.randn(500, 64, generator=gen, dtype=torch.float64))[0]
    for r in (1, 5, 32):  # r equal singular values: RankMe is r
        features = (coords[:, :r] * 3.0) @ basis[:r]
        assert effective_rank(features.float()) == pytest.approx(r, rel=1e-3)
    # unequal singular values: strictly between 1 and the count of non-zero ones
    skewed = (coords[:, :8] * torch.tensor([10.0, 1, 1, 1, 1, 1, 1, 1], dtype=torch.float64)) @ basis[:8]
    assert effective_rank(skewed) > 1.0 and effective_rank(skewed) < 8.0
    assert effective_rank(torch.randn(2000, 16, generator=gen)) == pytest.approx(16, rel=0.05)  # isotropic: near full


def test_the_loop_reports_the_monitor_every_n_steps_and_trains_the_same(small_cfg):
    base = ["train.max_steps=5", "train.log_every=1", "data.train_subset=320", *MONITOR]

    def run(*extra):
        seen = {}
        pretrain(small_cfg(*base, *extra), reporter=lambda m: seen.__setitem__(int(m["step"]), dict(m)), verbose=False)
        return seen

    watched, plain = run("eval.monitor_every=2"), run()
    assert [s for s, m in watched.items() if METRIC in m] == [2, 4, 5]  # every 2 steps and the last
    assert all(0.0 <= watched[s][METRIC] <= 100.0 and watched[s][RANK_METRIC] >= 1.0 for s in (2, 4, 5))
    assert not any(METRIC in m for m in plain.values())
    assert [watched[s]["loss"] for s in sorted(watched)] == [plain[s]["loss"] for s in sorted(plain)]  # bit-exact
    # a monitor interval that is no multiple of the log interval still runs at its own steps
    offbeat = run("eval.monitor_every=3", "train.log_every=2")
    assert [s for s, m in offbeat.items() if METRIC in m] == [3, 5], sorted(offbeat)


def test_the_progress_line_shows_the_monitor(capsys):
    from siamim.train.progress import TrainProgress

    progress = TrainProgress(total_steps=10, start_step=0, steps_per_epoch=10, enabled=True, stop_step=10)
    base = {"epoch": 0.1, "loss": 1.0, "lr": 1e-3, "images_per_s": 100.0}
    progress.update({**base, "step": 1}, log=True)
    progress.update({**base, "step": 2, METRIC: 61.234, RANK_METRIC: 40.04}, log=True)
    first, second = capsys.readouterr().out.strip().splitlines()
    assert "kNN monitor" not in first and second.endswith("| kNN monitor 61.23% | RankMe 40.0")
