"""Real services for the job tests: a Ray head, an S3 server (moto), an MLflow server.

One Ray head serves the whole session (the grid, the pretraining and the CLI
tests; test_data_s3.py starts its own, with the credentials it checks for leaks);
the S3 and MLflow servers are module-scoped. Every service is stopped by
terminating exactly the process tree its fixture started (never ``ray stop``,
which would also stop other Ray clusters on the host). The test process's Ray
driver (``ray_driver``) connects per module and is shut down when the module
ends, so later test modules can start their own Ray. The Ray head uses its own
``RAY_TMPDIR``, so a plain ``ray.init()`` elsewhere on the host does not attach to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.jobs.helpers import BIN

FASHION_MNIST = Path(os.environ.get("SIAMIM_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
S3_BUCKET = "siamim-test"


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:] if log else ''}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except Exception:
            time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:] if log else ''}")


def stop_tree(proc: subprocess.Popen, timeout: float = 8.0) -> None:
    """Terminate ``proc`` and every process it spawned (only those), then kill what is left."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid)]
        tree += tree[0].children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    proc.wait(timeout=timeout)


@pytest.fixture(scope="session")
def fashion_mnist_available():
    if (
        not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file()
        and not (FASHION_MNIST / "train-images-idx3-ubyte").is_file()
    ):
        pytest.fail(f"Fashion-MNIST is not installed in {FASHION_MNIST}: apt-get install dataset-fashion-mnist")
    return FASHION_MNIST


@pytest.fixture(scope="session")
def session_dir():
    path = Path(tempfile.mkdtemp(prefix="siamim-svc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def service_dir():
    path = Path(tempfile.mkdtemp(prefix="siamim-svc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


OWN_ENV = {  # what this process's in-process Ray driver needs too: no token auth, S3 test credentials
    "RAY_AUTH_MODE": "disabled",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def session_env():
    """Environment of the session's Ray head, the servers and every job subprocess (own ``RAY_TMPDIR``)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="srt-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {
        **os.environ,
        **OWN_ENV,
        "RAY_TMPDIR": str(ray_tmp),
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(key, None)
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def base_env(session_env):
    """:func:`session_env` for a module's subprocesses; this process gets :data:`OWN_ENV` for the module.

    ``RAY_TMPDIR`` stays with the subprocesses, so other tests' ``ray.init()`` calls are not redirected.
    """
    saved = {k: os.environ.get(k) for k in OWN_ENV}
    os.environ.update(OWN_ENV)
    yield dict(session_env)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def s3_server(base_env, service_dir):
    """A moto S3 server with bucket ``siamim-test``; yields the endpoint ``127.0.0.1:<port>``."""
    import boto3

    port = free_port()
    log = service_dir / "moto.log"
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=base_env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", 30, proc, log)
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket=S3_BUCKET)
        yield f"127.0.0.1:{port}"
    finally:
        stop_tree(proc)


@contextlib.contextmanager
def ray_head_process(env: dict, log_dir: Path):
    """``ray start --head --block`` with 2 CPUs; yields ``{"gcs": host:port, "dashboard": url}``."""
    port, dash = free_port(), free_port()
    log = log_dir / f"ray-head-{port}.log"
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus",
        "2",
        "--port",
        str(port),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
        "--ray-client-server-port",
        str(free_port()),
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--object-store-memory",
        "1000000000",
        "--disable-usage-stats",
    ]
    # Ray Train's PlacementGroupCleaner actor finds "its" cluster through the state API: name it (another
    # Ray instance on the host otherwise makes it print "Found multiple active Ray instances" every second).
    env = {**env, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dash}"}
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{dash}/api/version", 180, proc, log)  # a loaded 2-core box: over 90 s
        yield {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}"}
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        stop_tree(proc)


@pytest.fixture(scope="session")
def ray_head(session_env, session_dir):
    """The session's Ray head (2 CPUs), shared by every module that does not start its own."""
    with ray_head_process(session_env, session_dir) as head:
        yield head


@pytest.fixture(scope="module")
def ray_driver(ray_head, base_env):
    """This test process connected to the head as a Ray driver (for in-process launches), for one module."""
    import ray

    ray.init(address=ray_head["gcs"])
    yield ray_head
    ray.shutdown()


class MlflowServer:
    """``mlflow server`` (sqlite backend, proxied local artifacts under ``root``) that a test can stop and start
    again on the same port and store: a tracking server that blinks."""

    def __init__(self, env: dict, root: Path, log: Path):
        self.env, self.root, self.log = env, root, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self) -> str:
        cmd = [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root}/mlflow.db",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        out = self.log.open("a")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.url}/health", 180, self.proc, self.log)  # a loaded 2-core box: over a minute
        return self.url

    def stop(self) -> None:
        if self.proc is not None:
            stop_tree(self.proc)
            self.proc = None


@pytest.fixture(scope="module")
def mlflow_server(base_env, service_dir):
    """A module's MLflow server; yields its URL."""
    server = MlflowServer(base_env, service_dir / "mlflow-server", service_dir / "mlflow-server.log")
    try:
        yield server.start()
    finally:
        server.stop()
