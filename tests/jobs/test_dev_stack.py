"""platform/dev_stack.sh: the MLflow runs and the S3 objects they point at live and die together."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.helpers import free_port
from tests.jobs.helpers import REPO

STACK = REPO / "platform" / "dev_stack.sh"


def stack(cmd: list[str], env: dict) -> str:
    proc = subprocess.run(["bash", str(STACK), *cmd], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_down_up_never_lists_runs_whose_artifacts_are_gone(tmp_path):
    from mlflow.tracking import MlflowClient

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(
        SIAMIM_STACK_DIR=str(tmp_path / "stack"),
        MLFLOW_PORT=str(free_port()),
        S3_PORT=str(free_port()),
        AWS_ACCESS_KEY_ID="dev",
        AWS_SECRET_ACCESS_KEY="dev",
        AWS_DEFAULT_REGION="us-east-1",
    )
    uri = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    try:
        stack(["up", "s3", "mlflow"], env)
        client = MlflowClient(uri)
        exp = client.create_experiment("stack-test")
        run_id = client.create_run(exp, run_name="before").info.run_id
        client.log_text(run_id, "hello", "note.txt")  # proxied by the server to the in-memory S3 store
        assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]
        stack(["down"], env)

        out = stack(["up", "s3", "mlflow"], env)
        assert "moved the db to" in out, out
        client = MlflowClient(uri)
        live = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        assert live == []  # no run left that points at artifacts the new S3 server does not have
        (archived,) = (tmp_path / "stack" / "archive").glob("*/mlflow.db")  # ... and nothing was deleted
        assert MlflowClient(f"sqlite:///{archived}").get_run(run_id).info.run_name == "before"
    finally:
        subprocess.run(["bash", str(STACK), "down"], env=env, capture_output=True, timeout=120)


def test_down_leaves_no_stale_ray_pointer_and_a_new_local_ray_starts(tmp_path):
    """After ``up ray`` + ``down`` the current-cluster pointer is gone, and a local ``ray.init(address="local",
    num_cpus=...)`` (what the test fixtures and jobs start) works on that host."""
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "RAY_ADDRESS"))}
    env.update(
        SIAMIM_STACK_DIR=str(tmp_path / "stack"),
        RAY_TMPDIR=ray_tmp,
        RAY_PORT=str(free_port()),
        RAY_DASHBOARD_PORT=str(free_port()),
        RAY_NUM_CPUS="1",
    )
    pointer = os.path.join(ray_tmp, "ray", "ray_current_cluster")
    try:
        stack(["up", "ray"], env)
        deadline = time.time() + 60  # `ray start` writes the pointer a moment after its dashboard answers
        while not os.path.isfile(pointer) and time.time() < deadline:
            time.sleep(0.5)
        assert os.path.isfile(pointer) and env["RAY_PORT"] in open(pointer).read()
        out = stack(["down"], env)
        assert not os.path.exists(pointer), out
        code = "import ray; ray.init(address='local', num_cpus=1, include_dashboard=False); print('up'); ray.shutdown()"
        with open(pointer, "w") as f:  # even a stale pointer left by something else does not matter
            f.write("127.0.0.1:1\n")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0 and "up" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    finally:
        subprocess.run(["bash", str(STACK), "down"], env=env, capture_output=True, timeout=120)
        subprocess.run(["rm", "-rf", ray_tmp], check=False)
