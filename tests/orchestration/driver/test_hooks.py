"""The worker hook (SIAMIM_WORKER_HOOK): loaded by name, called after every report, forwarded to the workers."""

from __future__ import annotations

import pytest

from siamim.config import load_config
from siamim.orchestration.driver import hooks, trainer
from siamim.orchestration.driver.preflight import preflight
from siamim.orchestration.runs.storage import resolve_storage


def test_a_hook_from_a_file_runs_after_every_report(tmp_path):
    (tmp_path / "my_hook.py").write_text(
        "SEEN = []\ndef record(metrics, **context):\n    SEEN.append((metrics['step'], context))\n"
    )
    hook = hooks.load_hook(f"{tmp_path / 'my_hook.py'}:record")
    reports = trainer.WorkerReports(0, "r" * 32, hook=hook, fresh=True)
    reports.record({"step": 1, "loss": 2.0})
    reports.record({"step": 2, "loss": 1.0})
    assert [r["step"] for r in reports.records] == [1, 2]
    assert hook.__globals__["SEEN"] == [(1, {"rank": 0, "fresh": True}), (2, {"rank": 0, "fresh": True})]
    plain = trainer.WorkerReports(0, "r" * 32)  # no hook: the records only
    plain.record({"step": 1, "loss": 2.0})
    assert [r["metrics"] for r in plain.records] == [{"loss": 2.0}]


def test_a_hook_from_a_module_and_a_raising_hook_stops_the_report():
    hook = hooks.load_hook("tests.jobs.fault_hooks:fail_once_at_step_3")
    cfg = load_config("tiny")
    hook({"step": 2}, cfg=cfg, rank=0, fresh=True)
    hook({"step": 3}, cfg=cfg, rank=0, fresh=False)  # a group Ray restarted from a checkpoint trains on
    with pytest.raises(RuntimeError, match="injected failure after step 3"):
        hook({"step": 3}, cfg=cfg, rank=0, fresh=True)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "give <module>:<function>"),
        ("/nowhere/hook.py:f", "no file /nowhere/hook.py"),
        ("siamim.no_such_module:f", "cannot import 'siamim.no_such_module'"),
        ("siamim.orchestration.driver.hooks:no_such_function", "has no function 'no_such_function'"),
    ],
)
def test_a_bad_hook_fails_the_preflight_naming_the_variable(monkeypatch, tmp_path, spec, message):
    monkeypatch.setenv(hooks.WORKER_HOOK_ENV, spec)
    with pytest.raises(hooks.HookError, match=f"SIAMIM_WORKER_HOOK={spec!r}.*{message}".replace("(", r"\(")):
        preflight(load_config("tiny"), resolve_storage(str(tmp_path)), f"sqlite:///{tmp_path}/m.db")
    monkeypatch.delenv(hooks.WORKER_HOOK_ENV)
    assert hooks.load_hook() is None


def test_the_hook_and_mlflow_settings_reach_the_workers(monkeypatch, tmp_path):
    monkeypatch.setenv(hooks.WORKER_HOOK_ENV, "tests.jobs.fault_hooks:fail_once_at_step_3")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    env = trainer.run_config(load_config("tiny"), resolve_storage(str(tmp_path)), "run").worker_runtime_env["env_vars"]
    assert env[hooks.WORKER_HOOK_ENV] == "tests.jobs.fault_hooks:fail_once_at_step_3"
    assert env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] == "1" and "UNRELATED_VARIABLE" not in env
