"""Shared constants of the job tests (imported by the test modules; conftest holds the fixtures)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from siamim.config import parse_override

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PRETRAIN = REPO / "jobs" / "pretrain.py"

# Overrides for a tiny 2-worker CPU run (a few seconds of training).
TINY_ARGS = [
    "train.checkpoint_every=2",
    "train.log_every=1",
    "train.batch_size=32",
    "data.train_subset=512",
    "data.num_workers=0",
    "eval.knn.train_subset=500",
    "eval.knn.test_subset=1000",  # fewer kNN queries: the largest cost of a tiny run
    "run.num_workers=2",
]

# The same run as a dict of dotted keys (load_config's dict form, Ray Tune's param_space form).
TINY = dict(parse_override(o) for o in TINY_ARGS)


def knn_tolerance(queries: int) -> float:
    """kNN top-1 points (%) two of ``queries`` query images are worth: the bound of a run that should equal another.

    A restarted or resumed run computes the same losses to ~1e-6 (the loop is deterministic), so its kNN
    top-1 equals the uninterrupted run's up to a vote tie that a last-bit difference flips.
    """
    return 200.0 / queries


def submit_pretrain_cmd(dashboard: str, submission_id: str, *args: str, wait: bool = True) -> list[str]:
    """``ray job submit`` (of this checkout, to the head at ``dashboard``) of ``jobs/pretrain.py --config tiny *args``."""
    return [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        dashboard,
        "--working-dir",
        str(REPO),
        "--submission-id",
        submission_id,
        *([] if wait else ["--no-wait"]),
        "--",
        sys.executable,
        "jobs/pretrain.py",
        "--config",
        "tiny",
        *args,
    ]


@contextlib.contextmanager
def stack_cluster(stack_dir: Path, base_env: dict, node_cpus: int, node_gpus: int = 0) -> Iterator[dict]:
    """``{"address", "env", "stack"}`` of ``platform/dev_stack.sh up --nodes 2 ray``: a head with 0 CPUs plus two
    worker nodes of ``node_cpus`` CPUs (and ``node_gpus`` logical GPUs) on this host; all stopped afterwards."""
    from tests.helpers import free_port

    stack = REPO / "platform" / "dev_stack.sh"
    env = {
        **base_env,
        "SIAMIM_STACK_DIR": str(stack_dir),
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="rn", dir="/tmp"),
        "RAY_PORT": str(free_port()),
        "RAY_DASHBOARD_PORT": str(free_port()),
        "RAY_DASHBOARD_AGENT_PORT": str(free_port()),  # another Ray on the host may hold 52365
        "RAY_NUM_CPUS": "0",
        "RAY_NODE_CPUS": str(node_cpus),
        "RAY_NODE_GPUS": str(node_gpus),
    }
    up = subprocess.run(["bash", str(stack), "up", "--nodes", "2", "ray"], env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"({node_cpus} CPU, {node_gpus} logical GPU" in up.stdout, up.stdout
    try:
        yield {"address": f"127.0.0.1:{env['RAY_PORT']}", "env": env, "stack": stack_dir}
    finally:
        subprocess.run(["bash", str(stack), "down"], env=env, capture_output=True, timeout=180)
        subprocess.run(["rm", "-rf", env["RAY_TMPDIR"]], check=False)
