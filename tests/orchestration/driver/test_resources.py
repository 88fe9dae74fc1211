"""What a worker group needs and how it fits: one check for the pretraining job's group and a grid's trials."""

from __future__ import annotations

import pytest

from siamim.config import load_config
from siamim.errors import UserError
from siamim.orchestration.ablation.spec import GridSpec
from siamim.orchestration.driver.resources import (
    Group,
    check_trial_fits,
    fit_hint,
    full_size_warning,
    packing,
    resource_shortfall,
    shortfall,
)


def test_shortfall_names_the_settings_and_both_numbers():
    flags = ("--workers-per-trial", "--cpus-per-worker", "--gpus-per-worker")
    have = {"CPU": 8.0, "GPU": 8.0, "max_node_GPU": 4.0}
    assert shortfall(Group(2, 4, 2, flags), have) is None
    assert shortfall(Group(3, 4, 0, flags), have) == (
        "--workers-per-trial 3 x --cpus-per-worker 4 needs 12 CPUs; the Ray cluster has 8"
    )
    assert shortfall(Group(2, 1, 5, flags), have) == (
        "--workers-per-trial 2 x --gpus-per-worker 5 needs 10 GPUs; the Ray cluster has 8"
    )
    # 8 GPUs in all, but a worker's GPUs sit on one node: 4 at most
    assert shortfall(Group(1, 1, 5, flags), have) == "--gpus-per-worker 5: no node has that many GPUs (largest: 4)"


def test_a_trial_that_does_not_fit_is_a_user_error_naming_the_flag():
    spec = GridSpec(name="p", rows=["i"], seeds=1, protocols=["knn"], workers_per_trial=64)
    with pytest.raises(UserError, match="one trial does not fit: --workers-per-trial 64 x --cpus-per-worker 1"):
        check_trial_fits(spec, {"CPU": 2.0, "GPU": 0.0, "max_node_GPU": 0.0})
    check_trial_fits(GridSpec(name="p", rows=["i"], seeds=1, protocols=["knn"]), {"CPU": 2.0, "GPU": 0.0})


def test_an_elastic_group_that_fits_only_its_smallest_size_is_a_warning():
    cfg = load_config("tiny", ["run.num_workers=4", "run.min_workers=2", "train.batch_size=240"])
    assert full_size_warning(cfg, {"CPU": 4.0}) is None
    assert full_size_warning(cfg, {"CPU": 2.0}).startswith(
        "run.num_workers=4 x run.cpus_per_worker=1 needs 4 CPUs; the Ray cluster has 2. Training waits"
    )


def test_resource_shortfall_names_the_numbers_and_the_fix():
    cfg = load_config("tiny", ["run.num_workers=4"])
    assert resource_shortfall(cfg, {"CPU": 4.0}) is None
    assert resource_shortfall(cfg, {"CPU": 2.0}) == (
        "run.num_workers=4 x run.cpus_per_worker=1 needs 4 CPUs; the Ray cluster has 2"
    )
    assert fit_hint(cfg, {"CPU": 2.0}) == "lower --num-workers to 2 or --cpus-per-worker to 0.5"


def test_an_elastic_group_is_short_only_below_its_smallest_size():
    cfg = load_config("tiny", ["run.num_workers=4", "run.min_workers=2", "train.batch_size=240"])
    assert resource_shortfall(cfg, {"CPU": 2.0}) is None  # 2 workers may run
    assert resource_shortfall(cfg, {"CPU": 1.0}) == (
        "run.min_workers=2 x run.cpus_per_worker=1 needs 2 CPUs; the Ray cluster has 1"
    )


def test_packing_counts_cpus_gpus_and_the_cap():
    spec = GridSpec(
        name="p",
        rows=["i", "j"],
        seeds=3,
        protocols=["knn"],
        workers_per_trial=2,
        cpus_per_worker=2,
        gpus_per_worker=0.25,
    )
    have = {"CPU": 16.0, "GPU": 1.0, "max_node_GPU": 1.0}
    assert packing(spec, have) == {"by_resources": 2, "concurrent": 2, "waves": 3, "trials": 6}  # GPU-bound: 1/0.5
    spec.gpus_per_worker = 0.0
    assert packing(spec, have)["by_resources"] == 4  # CPU-bound: 16/4
    spec.max_concurrent = 3
    assert packing(spec, have)["concurrent"] == 3
