"""A worker node lost mid-pretraining on a real multi-node Ray cluster (head + 2 worker nodes on this host).

The cluster comes from ``platform/dev_stack.sh up --nodes 2 ray`` (the head schedules nothing; each worker
node has one CPU). An elastic run (``run.num_workers=2 run.min_workers=1``) trains on both nodes; once its
first checkpoint is registered, worker node 2 is stopped (its ``ray start`` process group, by the pid the
stack recorded). Ray Train restarts the group from the last checkpoint on the one node left: the run
finishes every step, each step's loss is in MLflow once, and the final checkpoint verifies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from siamim.checkpoint import verify_checkpoint
from siamim.orchestration import tracking
from tests.helpers import free_port
from tests.jobs.helpers import PRETRAIN, REPO, TINY_ARGS

pytestmark = pytest.mark.slow
STACK = REPO / "platform" / "dev_stack.sh"
STEPS = 24


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, session_env):
    """``{"address", "env", "stack"}`` of a head (0 CPUs) plus two 1-CPU worker nodes; stopped afterwards."""
    stack_dir = tmp_path_factory.mktemp("stack")
    env = {
        **session_env,
        "SIAMIM_STACK_DIR": str(stack_dir),
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="rn", dir="/tmp"),
        "RAY_PORT": str(free_port()),
        "RAY_DASHBOARD_PORT": str(free_port()),
        "RAY_NUM_CPUS": "0",
        "RAY_NODE_CPUS": "1",
    }
    up = subprocess.run(["bash", str(STACK), "up", "--nodes", "2", "ray"], env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield {"address": f"127.0.0.1:{env['RAY_PORT']}", "env": env, "stack": stack_dir}
    finally:
        subprocess.run(["bash", str(STACK), "down"], env=env, capture_output=True, timeout=180)
        subprocess.run(["rm", "-rf", env["RAY_TMPDIR"]], check=False)


def test_a_lost_worker_node_shrinks_the_elastic_group_and_the_run_finishes(cluster, tmp_path):
    storage, db = tmp_path / "runs", tmp_path / "mlflow.db"
    args = [
        "--address",
        cluster["address"],
        "--storage",
        str(storage),
        "--tracking-uri",
        f"sqlite:///{db}",
        "--name",
        "elastic",
        *TINY_ARGS,
        f"train.max_steps={STEPS}",
        "train.epochs=2",  # 16 steps an epoch (512 images, batch 32)
        "train.checkpoint_every=4",
        "run.min_workers=1",
        "run.max_failures=2",
    ]
    log = (tmp_path / "job.log").open("w")
    job = subprocess.Popen(
        [sys.executable, str(PRETRAIN), *args], cwd=tmp_path, env=cluster["env"], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 400
    # Two checkpoint directories: the first is then registered with Ray Train (a directory appears while
    # it is being written, before the report that registers it)
    while time.time() < deadline and job.poll() is None and len(list((storage / "elastic").glob("checkpoint_*"))) < 2:
        time.sleep(0.5)
    assert job.poll() is None, (tmp_path / "job.log").read_text()[-4000:]  # still training
    node = int((cluster["stack"] / "ray-node-2.pid").read_text())
    os.killpg(node, signal.SIGTERM)  # worker node 2 goes away: its raylet and its worker
    lost_at = time.time()
    assert job.wait(timeout=600) == 0, (tmp_path / "job.log").read_text()[-6000:]
    out = (tmp_path / "job.log").read_text()
    print(f"node lost -> job done in {time.time() - lost_at:.1f} s")

    (run,) = tracking_runs(db)
    losses = tracking.metric_history(f"sqlite:///{db}", run.info.run_id, "loss")
    assert [s for s, _ in losses] == list(range(1, STEPS + 1)), out[-3000:]  # every step once
    starts = [v for _, v in tracking.metric_history(f"sqlite:///{db}", run.info.run_id, "restored_from_step")]
    assert starts[0] == 0.0 and len(starts) >= 2 and 0 < starts[-1] < STEPS, starts  # restored from a checkpoint
    assert "rank 0 of 2" in out and "rank 0 of 1" in out, out[-3000:]  # two workers, then the one node left
    assert verify_checkpoint(storage / "elastic" / f"checkpoint_{STEPS:08d}" / "checkpoint.pt") is not None


def tracking_runs(db):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
