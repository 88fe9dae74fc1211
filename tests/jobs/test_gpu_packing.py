"""The grid on a GPU cluster without GPUs: two Ray worker nodes that declare 4 logical GPUs each.

The cluster comes from ``RAY_NODE_GPUS=4 platform/dev_stack.sh up --nodes 2 ray`` (a head with no CPUs, two
worker nodes with 8 logical CPUs and 4 logical GPUs: ``ray start --num-gpus 4``; no CUDA anywhere). The
trials run with ``--gpus-per-worker`` (``run.use_gpu=true``), so each Ray Train worker reserves its GPUs
exactly as on a GPU cluster; ``train.device=cpu`` makes it train on the CPU over gloo (Ray Train's default
NCCL refuses a node without CUDA; :func:`siamim.orchestration.driver.trainer.torch_config`).

- Packing: with ``--gpus-per-worker 2 --workers-per-trial 2`` two trials fit at once (GPU-bound: 4 GPUs a
  trial; the CPUs would fit 8); a grid of 3 trials runs at most 2 at once and reaches 2, counted twice: from
  the MLflow child runs' start/end times (what Tune ran) and from the GPU placement groups the trials' worker
  groups held (what Ray reserved: at the peak all 8 GPUs, never more). Both equal the dry run's estimate.
  (Two trials of two workers keep the run light enough for CI's memory; the estimates for 0.25 / 0.5 / 1
  GPU per worker, 16 / 8 / 4 trials at once, are checked below without running them.)
  The 0.25 / 0.5 GPU estimates of the same cluster are checked from its resources as the driver reads them.
- A worker asking more GPUs than any node has (5 on 4-GPU nodes, 8 in the cluster): exit 2 naming the
  flag, before any trial (or MLflow run) starts, in the dry run and in the run.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from siamim.cli import EXIT_BAD_INPUT
from tests.jobs.helpers import stack_cluster
from tests.jobs.test_ablate_grid import ABLATE, TINY, children, parent_of
from tests.jobs.test_node_loss import max_overlap

pytestmark = pytest.mark.slow
GPUS_PER_NODE = 4
CPUS_PER_NODE = 8  # more than the GPUs: the GPUs decide the packing
TRIALS = 3  # one more than fit at once: the third waits for a free set of 4 GPUs


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory, base_env):
    """``{"address", "env"}`` of a head (0 CPUs) plus two worker nodes of 8 CPUs and 4 logical GPUs; stopped after."""
    # base_env: this process's own Ray driver (the polling) runs without token auth too
    with stack_cluster(tmp_path_factory.mktemp("gpu-stack"), base_env, CPUS_PER_NODE, GPUS_PER_NODE) as cluster:
        yield cluster


def grid_cmd(cluster, tmp_path, name: str, *flags: str) -> list[str]:
    """``jobs/ablate.py`` on the cluster: 1-step kNN-only trials of row i that train on the CPU."""
    return [
        sys.executable,
        str(ABLATE),
        "--address",
        cluster["address"],
        "--storage",
        str(tmp_path / "abl"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--name",
        name,
        "--rows",
        "i",
        "--steps",
        "1",
        "--protocols",
        "knn",
        *flags,
        *TINY,
        "train.device=cpu",  # the workers hold logical GPUs; no CUDA to train on
    ]


class GpuPlacementGroups:
    """Polls the cluster's placement groups (a driver in this process) while a grid runs: every group that
    reserves GPUs (a trial's Ray Train worker group), with the times it was first and last seen CREATED."""

    def __init__(self, address: str, poll_s: float = 0.5):
        import ray

        ray.init(address=address, log_to_driver=False)
        self.seen: dict[str, list[float]] = {}
        self.gpus: dict[str, float] = {}
        self.poll_s = poll_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        import ray

        while not self.stop.is_set():
            now = time.time()
            for pg_id, pg in ray.util.placement_group_table().items():
                gpus = sum(b.get("GPU", 0.0) for b in pg["bundles"].values())
                if pg["state"] == "CREATED" and gpus > 0:
                    self.seen.setdefault(pg_id, [now, now])[1] = now
                    self.gpus[pg_id] = gpus
            self.stop.wait(self.poll_s)

    def close(self) -> None:
        import ray

        self.stop.set()
        self.thread.join(timeout=30)
        ray.shutdown()

    def peak_gpus(self) -> float:
        """The most GPUs the polled groups held at one poll."""
        times = sorted({t for span in self.seen.values() for t in span})
        return max(
            (sum(self.gpus[p] for p, (a, b) in self.seen.items() if a <= t <= b) for t in times),
            default=0.0,
        )


def test_packing_estimates_of_a_cluster_of_logical_gpus(gpu_cluster):
    """0.25 / 0.5 / 1 GPU per worker on 2 nodes x 4 GPUs, as the driver reads the cluster: GPU-bound estimates."""
    import ray

    from siamim.orchestration.ablation.spec import GridSpec
    from siamim.orchestration.driver.resources import cluster_resources, packing

    ray.init(address=gpu_cluster["address"], log_to_driver=False)
    try:
        have = cluster_resources()
    finally:
        ray.shutdown()
    assert have == {"CPU": 2.0 * CPUS_PER_NODE, "GPU": 2.0 * GPUS_PER_NODE, "max_node_GPU": float(GPUS_PER_NODE)}
    for gpus, fit in ((0.25, 16), (0.5, 8), (1.0, 4)):  # 2 workers per trial; 0.25 CPU each (CPUs fit 32)
        spec = GridSpec(
            name="p",
            rows=["i"],
            seeds=64,
            protocols=["knn"],
            workers_per_trial=2,
            cpus_per_worker=0.25,
            gpus_per_worker=gpus,
        )
        assert packing(spec, have)["by_resources"] == fit, gpus


def test_a_worker_larger_than_any_node_is_refused_before_any_trial(gpu_cluster, tmp_path):
    """``--gpus-per-worker 5``: the cluster has 8 GPUs, no node has 5. Exit 2 naming the flag, nothing started."""
    cmd = grid_cmd(gpu_cluster, tmp_path, "big", "--gpus-per-worker", "5", "--workers-per-trial", "1")
    want = "--gpus-per-worker 5: no node has that many GPUs (largest: 4)"
    for extra in (["--dry-run"], []):
        proc = subprocess.run([*cmd, *extra], cwd=tmp_path, env=gpu_cluster["env"], capture_output=True, text=True)
        assert proc.returncode == EXIT_BAD_INPUT and want in proc.stderr, (extra, proc.stdout + proc.stderr)
    assert not (tmp_path / "abl" / "big").exists()  # no grid directory: no Tune experiment, no trial
    if (tmp_path / "mlflow.db").exists():  # the preflight may have created the store: no run in it
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_the_grid_runs_as_many_gpu_trials_at_once_as_the_dry_run_says(gpu_cluster, tmp_path):
    """3 trials of 2 workers x 2 GPUs on 2 x 4 GPUs: 2 at once (Tune's trials and Ray's GPU groups), never more."""
    name, db = "gpus", tmp_path / "mlflow.db"
    cmd = grid_cmd(
        gpu_cluster, tmp_path, name, "--seeds", str(TRIALS), "--gpus-per-worker", "2", "--workers-per-trial", "2"
    )
    dry = subprocess.run([*cmd, "--dry-run"], cwd=tmp_path, env=gpu_cluster["env"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "= 2 CPU, 4 GPU" in dry.stdout and "16 CPU, 8 GPU -> 2 trial(s) fit at once" in dry.stdout, dry.stdout
    assert "running 2 at a time" in dry.stdout and "about 2 wave(s)" in dry.stdout, dry.stdout
    groups = GpuPlacementGroups(gpu_cluster["address"])
    started = time.time()
    try:
        grid = subprocess.run(cmd, cwd=tmp_path, env=gpu_cluster["env"], capture_output=True, text=True, timeout=900)
    finally:
        groups.close()
    assert grid.returncode == 0, (grid.stdout + grid.stderr)[-6000:]
    print(f"grid of {TRIALS} GPU trials on 2 x {GPUS_PER_NODE} logical GPUs: {time.time() - started:.1f} s")

    assert "rank 0 of 2 on cpu" in grid.stdout + grid.stderr  # CPU training inside GPU-holding workers
    kids = children(db, parent_of(db, name).info.run_id)
    assert len(kids) == TRIALS and all(r.info.status == "FINISHED" for r in kids)
    assert all(
        r.data.params["run.use_gpu"] == "True" and float(r.data.params["run.gpus_per_worker"]) == 2 for r in kids
    )
    tune_overlap = max_overlap([(r.info.start_time, r.info.end_time) for r in kids])
    spans = {p: (round(a - started, 1), round(b - started, 1)) for p, (a, b) in groups.seen.items()}
    print(f"trials at once: Tune {tune_overlap}; GPU worker groups {max_overlap(list(spans.values()))} {spans}")
    assert tune_overlap == 2, [(r.info.start_time, r.info.end_time) for r in kids]  # = the dry run's estimate
    assert len(groups.seen) == TRIALS and set(groups.gpus.values()) == {4.0}, groups.gpus  # 2 workers x 2 GPUs
    assert max_overlap(list(groups.seen.values())) == 2, spans  # what Ray reserved at once: 2 trials' groups
    assert groups.peak_gpus() == 2.0 * GPUS_PER_NODE, spans  # all 8 GPUs held at the peak, never more
