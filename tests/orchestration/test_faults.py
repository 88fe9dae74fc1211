"""The fault-injection hook of the fault-tolerance tests (SIAMIM_FAIL_AT_STEP), outside the core loop."""

from __future__ import annotations

import pytest

from siamim.orchestration import faults, trainer


def test_hook_raises_once_at_its_step_in_a_fresh_worker_group_only():
    seen = []
    record = seen.append
    report = faults.with_fault(record, 3, fresh=True)
    report({"step": 2})
    with pytest.raises(faults.InjectedFault, match="SIAMIM_FAIL_AT_STEP=3"):
        report({"step": 3})
    assert [m["step"] for m in seen] == [2, 3]  # the step's metrics are reported before the failure
    assert faults.with_fault(record, 3, fresh=False) is record  # a group Ray restarted from a checkpoint
    assert faults.with_fault(record, None, fresh=True) is record


def test_step_comes_from_the_environment_and_reaches_the_workers(monkeypatch, tmp_path):
    from siamim.config import load_config
    from siamim.orchestration.storage import resolve_storage

    monkeypatch.delenv(faults.FAIL_AT_STEP_ENV, raising=False)
    assert faults.fail_at_step() is None
    monkeypatch.setenv(faults.FAIL_AT_STEP_ENV, "3")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    assert faults.fail_at_step() == 3
    rc = trainer.run_config(load_config("tiny"), resolve_storage(str(tmp_path)), "run")
    env = rc.worker_runtime_env["env_vars"]
    assert env[faults.FAIL_AT_STEP_ENV] == "3" and env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] == "1"
    monkeypatch.setenv(faults.FAIL_AT_STEP_ENV, "three")
    with pytest.raises(ValueError, match="give a step number"):
        faults.fail_at_step()
