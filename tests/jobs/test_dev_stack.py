"""platform/dev_stack.sh: the MLflow runs and the S3 objects they point at live and die together."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

from tests.helpers import free_port
from tests.jobs.helpers import REPO

STACK = REPO / "platform" / "dev_stack.sh"


def stack(cmd: list[str], env: dict) -> str:
    proc = subprocess.run(["bash", str(STACK), *cmd], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def ray_stack_env(tmp_path, ray_tmp: str, head_cpus: int) -> dict:
    """The environment of a dev stack of its own: state under ``tmp_path``, free ports, Ray's files in ``ray_tmp``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "RAY_ADDRESS"))}
    env.update(
        SIAMIM_STACK_DIR=str(tmp_path / "stack"),
        RAY_TMPDIR=ray_tmp,
        RAY_PORT=str(free_port()),
        RAY_DASHBOARD_PORT=str(free_port()),
        RAY_DASHBOARD_AGENT_PORT=str(free_port()),  # another Ray on the host may hold 52365
        RAY_NUM_CPUS=str(head_cpus),
    )
    return env


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
    env = ray_stack_env(tmp_path, ray_tmp, head_cpus=1)
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


NODE_IDS = """
import ray
ray.init(address="127.0.0.1:{port}")
@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id()
print(sorted(ray.get([where.options(resources={{f"siamim_node_{{k}}": 1}}).remote() for k in (1, 2)])))
print(len([n for n in ray.nodes() if n["Alive"]]))
"""


def running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a stopped process whose parent has not reaped it yet)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_up_nodes_starts_a_multi_node_cluster_and_down_stops_all_of_it(tmp_path):
    """``up --nodes 2 ray``: a head and two worker nodes (their own raylets) on this host; a task pinned to
    each worker node runs there; ``down`` stops every process of that cluster."""
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = ray_stack_env(tmp_path, ray_tmp, head_cpus=0)  # the head schedules nothing: work lands on the nodes
    try:
        assert "3 nodes alive (head + 2)" in stack(["up", "--nodes", "2", "ray"], env)  # one line per node joined
        code = NODE_IDS.format(port=env["RAY_PORT"])
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        ids, alive = proc.stdout.strip().splitlines()[-2:]
        assert len(set(eval(ids))) == 2 and alive == "3"  # two distinct worker nodes, head + 2 alive
        pids = [int((tmp_path / "stack" / f"{n}.pid").read_text()) for n in ("ray", "ray-node-1", "ray-node-2")]
        out = stack(["down"], env)
        assert "ray-node-1: down" in out and "ray-node-2: down" in out and "ray: down" in out, out
        left = subprocess.run(["pgrep", "-f", f"127.0.0.1:{env['RAY_PORT']}"], capture_output=True, text=True)
        assert left.stdout.strip() == "", left.stdout  # no raylet, GCS or `ray start` of this cluster
        assert not any(running(p) for p in pids)
        bad = subprocess.run(["bash", str(STACK), "up", "--nodes", "two"], env=env, capture_output=True, text=True)
        assert bad.returncode == 2 and "--nodes needs a number" in bad.stderr
    finally:
        subprocess.run(["bash", str(STACK), "down"], env=env, capture_output=True, timeout=120)
        subprocess.run(["rm", "-rf", ray_tmp], check=False)


def test_up_refuses_the_dashboard_agent_port_before_starting_anything(tmp_path):
    env = ray_stack_env(tmp_path, tempfile.mkdtemp(prefix="rp", dir="/tmp"), head_cpus=1)
    env["RAY_DASHBOARD_PORT"] = "52365"
    proc = subprocess.run(["bash", str(STACK), "up", "ray"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "RAY_DASHBOARD_PORT=52365" in proc.stderr and "choose another" in proc.stderr, proc.stderr
    assert not (tmp_path / "stack" / "ray.pid").exists()


def test_up_refuses_a_taken_job_agent_port_naming_the_variable(tmp_path):
    """A port held by another process (e.g. another Ray instance's agent): exit 2 naming RAY_DASHBOARD_AGENT_PORT,
    before any Ray process starts (the head would come up but refuse every ``ray job submit``)."""
    env = ray_stack_env(tmp_path, tempfile.mkdtemp(prefix="rp", dir="/tmp"), head_cpus=1)
    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        env["RAY_DASHBOARD_AGENT_PORT"] = str(held.getsockname()[1])
        proc = subprocess.run(["bash", str(STACK), "up", "ray"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"port {env['RAY_DASHBOARD_AGENT_PORT']} (RAY_DASHBOARD_AGENT_PORT" in proc.stderr, proc.stderr
    assert not (tmp_path / "stack" / "ray.pid").exists()


def test_a_head_that_dies_at_start_fails_fast_with_its_log(tmp_path):
    """A head whose `ray start` fails half-way (its dashboard may already answer) is reported with its log
    as soon as the process is gone (not at the 90 s deadline), and what it had started is stopped."""
    env = ray_stack_env(tmp_path, tempfile.mkdtemp(prefix="rp", dir="/tmp"), head_cpus=1)
    env["RAY_OBJECT_STORE_BYTES"] = "1"  # below Ray's minimum: `ray start --head` raises and exits
    proc = subprocess.run(["bash", str(STACK), "up", "ray"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert proc.returncode != 0
        assert "ray.log" in proc.stderr and "minimum allowed" in proc.stderr, proc.stderr  # the log's reason
        assert "not ready after" not in proc.stderr and "after 90 s" not in proc.stderr, proc.stderr  # not timed out
        assert not (tmp_path / "stack" / "ray.pid").exists()
    finally:
        subprocess.run(["bash", str(STACK), "down"], env=env, capture_output=True, timeout=120)
