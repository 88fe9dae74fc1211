"""The config -> Ray Train V2 objects mapping, and preflight checks (no cluster needed)."""

from __future__ import annotations

import pytest

from siamim.config import load_config
from siamim.errors import UserError
from siamim.orchestration.driver import preflight, trainer
from siamim.orchestration.runs import storage
from siamim.orchestration.tracking import stream


def test_scaling_config_from_run_section():
    cfg = load_config("tiny", {"run.num_workers": 4, "run.cpus_per_worker": 2, "train.batch_size": 64})
    sc = trainer.scaling_config(cfg)
    assert sc.num_workers == 4 and not sc.use_gpu and sc.resources_per_worker == {"CPU": 2.0}
    gpu = trainer.scaling_config(load_config("tiny", {"run.use_gpu": True, "run.gpus_per_worker": 0.5}))
    assert gpu.use_gpu and gpu.resources_per_worker == {"CPU": 1.0, "GPU": 0.5}


def test_run_config_checkpoints_failures_and_storage(tmp_path):
    cfg = load_config("tiny", {"run.keep_checkpoints": 3, "run.max_failures": 2})
    rc = trainer.run_config(cfg, storage.resolve_storage(str(tmp_path)), "run-a")
    assert rc.name == "run-a" and rc.storage_path == str(tmp_path)
    assert rc.checkpoint_config.num_to_keep == 3 and rc.failure_config.max_failures == 2
    s3 = storage.resolve_storage("s3://bucket/p?endpoint_override=127.0.0.1:9&scheme=http")
    rc = trainer.run_config(cfg, s3, "run-b")
    assert rc.storage_path == "bucket/p" and rc.storage_filesystem is s3.filesystem


def test_preflight_reports_missing_dataset(tmp_path):
    cfg = load_config("tiny", {"data.root": str(tmp_path / "nowhere")})
    with pytest.raises(UserError, match="Fashion-MNIST"):  # the dataset's own error: it names the fix
        preflight.check_data(cfg)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(preflight.PreflightError, match="train-labels-idx1-ubyte"):
        preflight.check_data(load_config("tiny", {"data.root": str(tmp_path / "partial")}))


def test_min_workers_makes_the_group_elastic():
    assert trainer.scaling_config(load_config("tiny")).num_workers == 2  # fixed, as before
    assert trainer.scaling_config(load_config("tiny", {"run.min_workers": 1})).num_workers == (1, 2)
    assert trainer.scaling_config(load_config("tiny", {"run.min_workers": 2})).num_workers == 2


def test_workers_that_train_on_the_cpu_use_gloo_even_when_they_hold_gpus():
    """``train.device=cpu``: gloo (NCCL refuses a node without CUDA); otherwise Ray's default (NCCL with GPUs)."""
    cpu = load_config("tiny", {"run.use_gpu": True, "run.gpus_per_worker": 1, "train.device": "cpu"})
    assert trainer.torch_config(cpu).backend == "gloo"
    assert trainer.scaling_config(cpu).resources_per_worker == {"CPU": 1.0, "GPU": 1.0}  # the GPUs still reserved
    assert trainer.torch_config(load_config("tiny", {"run.use_gpu": True})) is None  # the CUDA path as before


def test_the_elastic_resize_check_interval_reaches_ray():
    assert trainer.scaling_config(load_config("tiny")).elastic_resize_monitor_interval_s == 60.0  # Ray's default
    cfg = load_config("tiny", {"run.min_workers": 1, "run.elastic_resize_s": 5})
    assert trainer.scaling_config(cfg).elastic_resize_monitor_interval_s == 5.0


def test_report_metrics_carry_records_points_and_the_scalars_tune_sees():
    reports = trainer.WorkerReports(0, "r" * 32)
    reports.record({"step": 1, "loss": 9.0, "lr": 0.1})
    reports.record({"step": 2, "loss": 8.0, "lr": 0.2})
    reports.point("knn_top1", 50.0, 2)
    reports.point("restored_from_step", 0, 0)
    m = reports.metrics(2, final=True)
    assert m["step"] == 2 and m["loss"] == 8.0 and m["knn_top1"] == 50.0 and m[stream.FINAL]
    assert [(r["step"], r.get("once", False)) for r in m[stream.RECORDS]] == [
        (1, False),
        (2, False),
        (2, True),
        (0, True),
    ]
    assert m[stream.RECORDS][3]["metrics"] == {"restored_from_step": 0.0}
    assert stream.scalars(m) == {"step": 2, "loss": 8.0, "lr": 0.2, "knn_top1": 50.0, "restored_from_step": 0.0}
