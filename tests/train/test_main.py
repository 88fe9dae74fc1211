"""``python -m siamim.train`` end to end, as a subprocess on the tiny settings."""

import os
import subprocess
import sys
from pathlib import Path

from siamim.checkpoint import load_checkpoint
from siamim.config import load_config, to_dict
from tests.conftest import SMALL

ROOT = Path(__file__).resolve().parents[2]


def run_main(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "siamim.train", "--config", "tiny", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_trains_and_writes_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    done = run_main(
        "--no-knn", *SMALL, "train.max_steps=3", "data.train_subset=320", "train.device=cpu", f"train.output_dir={out}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 3 and state["config"]["train"]["max_steps"] == 3
    assert to_dict(load_config(out / "config.yaml")) == state["config"]  # the resolved config, saved beside it
    assert "done: step 3" in done.stdout


def test_bad_override_exits_non_zero_naming_the_key(tmp_path):
    done = run_main("model.dpeth=3", f"train.output_dir={tmp_path}/run")
    assert done.returncode != 0
    assert "model.dpeth" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # rejected before anything ran
    done = run_main("train.batch_size=many", f"train.output_dir={tmp_path}/run")
    assert done.returncode != 0
    assert "train.batch_size" in done.stderr, done.stderr[-2000:]
