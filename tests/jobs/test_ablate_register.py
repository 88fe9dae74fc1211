"""jobs/ablate.py --register: each trial's encoder becomes a registered model version that evaluates.

One trial (row i, seed 0, 2 steps) on the session's Ray head, real Tune + Train, real MLflow store.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.jobs.test_ablate_grid import GRID_FLAGS, TINY, ablate_cmd, children, parent_of
from tests.jobs.test_evaluate import QUICK, _job

pytestmark = pytest.mark.slow


def test_grid_registers_each_trials_encoder(ray_head, base_env, fashion_mnist_available, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    storage, db = tmp_path / "abl", tmp_path / "mlflow.db"
    cmd = ablate_cmd(ray_head, storage, db, "--rows", "i", "--name", "reg", "--register", "tiny-grid", *GRID_FLAGS)
    proc = subprocess.run([*cmd, *TINY], cwd=tmp_path, env=base_env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    (trial,) = children(db, parent_of(db, "reg").info.run_id)
    assert trial.data.tags["siamim.registered_model"] == "models:/tiny-grid-i/1"
    version = client.get_model_version("tiny-grid-i", "1")
    assert version.run_id == trial.info.run_id and version.tags == {"row": "i", "seed": "0", "grid": "reg"}
    assert {a.path for a in client.list_artifacts(trial.info.run_id, "encoder")} == {
        "encoder/config.json",
        "encoder/model.safetensors",
    }
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "eval"
    rc = _job().main(
        [
            "--checkpoint",
            "models:/tiny-grid-i/1",
            "--protocols",
            "knn",
            "--tracking-uri",
            uri,
            "--out",
            str(out),
            *QUICK,
        ]
    )
    assert rc == 0 and (out / "evaluation.csv").is_file()
    # a grid child run is a run like a pretraining run: its id alone names its encoder
    by_id = tmp_path / "eval-by-id"
    argv = ["--checkpoint", trial.info.run_id, "--protocols", "knn", "--tracking-uri", uri, "--out", str(by_id)]
    assert _job().main([*argv, *QUICK]) == 0
    assert (by_id / "evaluation.csv").is_file()
