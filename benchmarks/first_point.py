#!/usr/bin/env python
"""Seconds from a pretraining job's first step to its first loss point in MLflow (the live curve's latency).

    python benchmarks/first_point.py                      # tiny preset, 3 runs, local sqlite store
    python benchmarks/first_point.py --runs 2 --tracking-uri http://127.0.0.1:5000 train.log_every=50

Each run starts ``jobs/pretrain.py`` as a user would (embedded Ray, 2 CPU workers), reads its run id and its
"first step done X s after launch" line, and polls the MLflow store from this process every 0.1 s until the
run's ``loss`` history has a point; it also checks that no checkpoint exists yet at that moment. Then it stops
the job (SIGTERM: the run is marked KILLED) and starts the next one. The first step's time is the job's process
start plus X, so the latency is overstated by the interpreter's start-up (a fraction of a second), never
understated. The loop reports a launch's first step on its own interval, so the first point is step 1 and the
figure is the path loop -> ``ray.train.report`` -> driver callback -> writer thread -> MLflow.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_ID = re.compile(r"MLflow run ([0-9a-f]{32}) at ")
FIRST_STEP = re.compile(r"first step done ([0-9.]+) s after launch")


def one_run(index: int, work: Path, tracking_uri: str, overrides: list[str], timeout_s: float) -> dict:
    """One job until its first loss point is in MLflow: ``{"first_step_s", "latency_s", "step", "checkpoints"}``."""
    from mlflow.tracking import MlflowClient

    storage = work / "runs"
    cmd = [sys.executable, str(REPO / "jobs/pretrain.py"), f"--name=fp{index}", f"--storage={storage}"]
    cmd += [f"--tracking-uri={tracking_uri}", *overrides]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    started = time.time()
    job = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict[str, str] = {}
    tail: list[str] = []

    def read() -> None:
        for line in job.stdout:
            tail[:] = [*tail[-40:], line]
            for key, pattern in (("run_id", RUN_ID), ("first_step", FIRST_STEP)):
                if key not in seen and (match := pattern.search(line)):
                    seen[key] = match.group(1)

    threading.Thread(target=read, daemon=True).start()
    client = MlflowClient(tracking_uri)
    try:
        while time.time() - started < timeout_s:
            if job.poll() is not None:
                raise RuntimeError(f"the job ended (exit {job.returncode}) before its first point:\n{''.join(tail)}")
            if "run_id" in seen:
                history = client.get_metric_history(seen["run_id"], "loss")
                if history:
                    at = time.time()
                    checkpoints = list(storage.glob(f"fp{index}/checkpoint_*"))
                    while "first_step" not in seen and time.time() - at < 30:  # its line may follow the point
                        time.sleep(0.05)
                    first_step = started + float(seen["first_step"])
                    step = min(m.step for m in history)
                    return {
                        "first_step_s": first_step - started,
                        "latency_s": at - first_step,
                        "step": step,
                        "checkpoints": len(checkpoints),
                    }
            time.sleep(0.1)
        raise RuntimeError(f"no loss point in MLflow within {timeout_s:g} s:\n{''.join(tail)}")
    finally:
        if job.poll() is None:
            job.send_signal(signal.SIGTERM)
            try:
                job.wait(timeout=120)
            except subprocess.TimeoutExpired:
                job.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="jobs to time (default 3)")
    p.add_argument("--tracking-uri", help="MLflow store (default: a new sqlite store in a temporary directory)")
    p.add_argument("--timeout", type=float, default=600, help="seconds a run may take to its first point")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="more dotted overrides of the job")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="siamim-first-point-") as tmp:
        uri = args.tracking_uri or f"sqlite:///{tmp}/mlflow.db"
        for i in range(args.runs):
            row = one_run(i, Path(tmp), uri, args.overrides, args.timeout)
            rows.append(row)
            print(
                f"run {i}: first step {row['first_step_s']:.1f} s after launch; loss point of step {row['step']} "
                f"in MLflow {row['latency_s']:.2f} s later; checkpoints then: {row['checkpoints']}",
                flush=True,
            )
    latencies = [r["latency_s"] for r in rows]
    print(
        f"first step -> first loss point in MLflow ({args.tracking_uri or 'a sqlite store'}): min {min(latencies):.2f} s, "
        f"median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s over {len(rows)} runs",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
