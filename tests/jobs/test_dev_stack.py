"""platform/dev_stack.sh: the MLflow runs and the S3 objects they point at live and die together."""

from __future__ import annotations

import os
import subprocess

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
