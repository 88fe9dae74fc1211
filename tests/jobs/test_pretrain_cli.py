"""jobs/pretrain.py's command line: help, overrides, and failing fast on bad input before Ray starts."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import free_port
from tests.jobs.helpers import PRETRAIN, TINY_ARGS


def load_cli():
    spec = importlib.util.spec_from_file_location("pretrain_cli", PRETRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(args: list[str], env: dict, cwd, timeout: float = 120) -> tuple[int, str, float]:
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(PRETRAIN), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, proc.stdout + proc.stderr, time.time() - start


def test_help_lists_the_options():
    proc = subprocess.run([sys.executable, str(PRETRAIN), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for option in (
        "--config",
        "--num-workers",
        "--use-gpu",
        "--gpus-per-worker",
        "--storage",
        "--experiment",
        "--resume",
        "--tracking-uri",
        "key=value",
        "ray job submit",
    ):
        assert option in proc.stdout, option


def test_flags_become_dotted_overrides():
    cli = load_cli()
    args = cli.build_parser().parse_args(
        [
            "model.depth=2",
            "--num-workers",
            "4",
            "--gpus-per-worker",
            "0.5",
            "--storage",
            "s3://b/p",
            "--experiment",
            "exp",
            "--max-failures",
            "3",
        ]
    )
    overrides = cli.cli_overrides(args)
    assert overrides[0] == "model.depth=2"
    assert {
        "run.num_workers=4",
        "run.gpus_per_worker=0.5",
        "run.use_gpu=true",
        "run.storage=s3://b/p",
        "run.experiment=exp",
        "run.max_failures=3",
    } <= set(overrides)
    assert cli.build_parser().parse_args(["--resume"]).resume == "latest"
    assert cli.build_parser().parse_args(["--resume", "r1"]).resume == "r1"


def test_unreachable_tracking_uri_fails_fast_before_ray(base_env, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    rc, out, elapsed = run_cli(["--tracking-uri", uri, "--storage", str(tmp_path / "runs")], base_env, tmp_path)
    assert rc == 2, out
    assert f"MLflow tracking server {uri} is unreachable" in out
    assert "Ray instance" not in out and "RayTrainWorker" not in out
    assert elapsed < 60
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unwritable_storage_fails_fast_before_ray(base_env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc, out, elapsed = run_cli(
        ["--storage", str(blocker / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], base_env, tmp_path
    )
    assert rc == 2, out
    assert f"storage {blocker / 'runs'} is not writable" in out
    assert "Ray instance" not in out
    assert elapsed < 60


def test_unreachable_s3_storage_fails_fast(base_env, tmp_path):
    cli = load_cli()
    storage = f"s3://bucket/x?endpoint_override=127.0.0.1:{free_port()}&scheme=http"
    start = time.time()
    rc = cli.main(["--storage", storage, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert rc == 2
    assert time.time() - start < 45


def test_bad_key_and_unknown_resume_are_clear_errors(base_env, tmp_path, capsys):
    cli = load_cli()
    assert cli.main(["model.dpth=2", "--storage", str(tmp_path)]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert (
        cli.main(["--resume", "nope", "--storage", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    )
    assert "--resume nope: no run of that name" in capsys.readouterr().err


def test_config_files_that_do_not_parse_fail_in_one_line(tmp_path):
    """A YAML syntax error, a list instead of sections, an empty file: exit 2 naming the file, no traceback."""
    cases = {
        "unclosed.yaml": ("model:\n  depth: [1,\n", "is not valid YAML at line"),
        "tabs.yaml": ("model:\n\tdepth: 2\n", "is not valid YAML at line 2"),
        "list.yaml": ("- a\n- b\n", "must hold a mapping of sections"),
        "scalar.yaml": ("just words\n", "must hold a mapping of sections"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        rc, out, took = run_cli(
            ["--config", str(tmp_path / name), "--storage", str(tmp_path)], {**os.environ}, tmp_path
        )
        assert rc == 2 and expected in out and name in out, (name, out[-2000:])
        assert "Traceback" not in out and took < 60, (name, took)


@pytest.mark.parametrize("bad", ["a b", "../up", "x/y", "-dash", "semi;colon", "quote'd", "é", "n" * 101, ".hidden"])
def test_run_names_a_directory_ray_or_a_shell_cannot_carry_are_refused(bad, tmp_path, capsys):
    cli = load_cli()
    assert cli.main([f"--name={bad}", "--storage", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert f"run.name={bad!r} is invalid" in err and "letters, digits" in err
    assert not (tmp_path / bad).exists() and not (tmp_path / "m.db").exists()  # nothing written


def test_plain_s3_uri_without_reachable_endpoint_is_exit_2_with_the_fix(base_env, tmp_path, capsys, monkeypatch):
    """No endpoint and no route to AWS: the region lookup fails; the message says so and how to name an endpoint."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cli = load_cli()
    rc = cli.main(["--storage", "s3://siamim-no-such-bucket-4f1c/runs", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "S3 endpoint could not be reached" in err and "endpoint_override=" in err and "AWS_ENDPOINT_URL" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def _mlflow_runs(db: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


TINY_EMBEDDED = [o for o in TINY_ARGS if not o.startswith("run.num_workers")]  # each test sets its workers


def test_embedded_ray_that_cannot_fit_the_workers_fails_fast(base_env, tmp_path):
    """A local Ray instance has no autoscaler: asking for more CPUs than it has fails before any worker starts."""
    import os

    cpus = os.cpu_count() or 2
    rc, out, elapsed = run_cli(
        [
            "--storage",
            str(tmp_path / "runs"),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/m.db",
            "--num-workers",
            "2",
            "--cpus-per-worker",
            str(cpus),
            *TINY_EMBEDDED,
        ],
        base_env,
        tmp_path,
        timeout=240,
    )
    assert rc == 2, out[-3000:]
    assert f"needs {2 * cpus} CPUs" in out and "local Ray instance" in out and "--num-workers" in out, out[-3000:]
    assert "RayTrainWorker" not in out
    assert elapsed < 150
    assert all(r.info.status != "RUNNING" for r in _mlflow_runs(f"{tmp_path}/m.db"))


@pytest.mark.parametrize(
    "sig, code, word, when",
    [
        ("SIGTERM", 143, "terminated", "starting run 'term'"),  # the MLflow run exists, fit() is about to run
        ("SIGINT", 130, "interrupted", "first step done"),  # mid-training: Ray Train's own SIGINT handler is on
    ],
)
def test_a_signal_to_the_driver_marks_the_mlflow_run_killed(base_env, tmp_path, sig, code, word, when):
    """`ray job stop` sends SIGTERM, Ctrl-C SIGINT: the run ends KILLED (never RUNNING), with the documented
    exit code (143 / 130) and word."""
    import signal

    db = f"{tmp_path}/m.db"
    env = {**base_env, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(PRETRAIN),
            "--storage",
            str(tmp_path / "runs"),
            "--tracking-uri",
            f"sqlite:///{db}",
            "--name",
            "term",
            *TINY_EMBEDDED,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if when in line:
                time.sleep(2.0 if sig == "SIGTERM" else 0.0)
                proc.send_signal(getattr(signal, sig))
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + (rest or "")
    assert proc.returncode == code, out[-3000:]
    assert f"[siamim] {word};" in out, out[-3000:]
    (run,) = _mlflow_runs(db)
    assert run.info.status == "KILLED", out[-3000:]
    assert "--resume term" in out
