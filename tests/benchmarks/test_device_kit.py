"""The device kit's ``--smoke`` mode runs on CPU where ray, mlflow and boto3 cannot be imported, and writes
every section's figures; a failing or overrunning section is recorded while the kit goes on.

The one stand-in here is the import blocker: a ``sitecustomize`` on ``PYTHONPATH`` that makes importing
ray, mlflow or boto3 fail in the kit's process and in every Python process it starts (the e2e section's
``python -m siamim.train`` runs too), and logs each attempt, so even an import guarded by try/except fails
the test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.kit.runner import SECTIONS, run_kit, run_section
from benchmarks.kit.sizes import sizes

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("ray", "mlflow", "boto3")
BLOCKER = '''
import os, sys

class _Blocker:
    """Fails every import of a blocked top-level package and logs the attempt."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            with open(os.environ["KIT_BLOCKED_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ImportError(f"{{name}} is blocked in the device kit's test")
        return None

sys.meta_path.insert(0, _Blocker())
'''


def _blocked_env(tmp_path: Path) -> tuple[dict, Path]:
    site = tmp_path / "blocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(BLOCKED)))
    log = tmp_path / "blocked.log"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "KIT_BLOCKED_LOG": str(log)}
    return env, log


def _numbers(value, where: str = ""):
    """Every number in a JSON value with its path; non-finite floats appear as strings (Record.clean)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{where}[{i}]")
    elif isinstance(value, bool):
        return
    elif isinstance(value, (int, float)):
        yield where, float(value)
    elif isinstance(value, str) and value.lower() in ("nan", "inf", "-inf"):
        yield where, float(value)


def test_blocker_blocks(tmp_path):
    env, log = _blocked_env(tmp_path)
    for name in BLOCKED:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert done.returncode != 0 and "blocked in the device kit's test" in done.stderr
    assert log.read_text().split() == list(BLOCKED)


def test_smoke_kit_without_ray_mlflow_boto3(tmp_path):
    env, log = _blocked_env(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, "-m", "benchmarks.device_kit", "--out", str(out), "--smoke", "--work", str(work)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    kit = json.loads((out / "kit.json").read_text())
    report = {n: (s["status"], s["error"], s["log_tail"][-1500:]) for n, s in kit["sections"].items()}
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:], report)
    assert not log.exists(), f"the kit tried to import {log.read_text().split()}"

    assert kit["mode"] == "smoke" and kit["device"] == "cpu" and list(kit["sections"]) == list(SECTIONS)
    for name, sec in kit["sections"].items():
        assert sec["status"] == "ok" and sec["error"] is None, (name, sec["error"])
        assert 0 < sec["wall_s"] <= sec["budget_s"] + 1, (name, sec["wall_s"], sec["budget_s"])
    assert sum(s["wall_s"] for s in kit["sections"].values()) <= kit["wall_s"] <= kit["total_budget_s"]
    bad = [(where, v) for where, v in _numbers(kit) if not math.isfinite(v)]
    assert not bad, bad

    r = {name: sec["results"] for name, sec in kit["sections"].items()}
    for variant in ("ours", "reference", "ours_compiled"):
        assert r["step"][variant]["images_per_s"] > 0 and r["step"][variant]["TFLOP_per_s"] > 0
    assert r["step"]["ours_compiled"]["compiled"] and r["step"]["speedup_ours_over_reference"] > 0
    assert [b["batch"] for b in r["loss_memory"]["batches"]] == [2, 4]
    for b in r["loss_memory"]["batches"]:
        assert b["ours"]["ms"] > 0 and b["reference"]["ms"] > 0
        assert math.isclose(b["ours"]["loss"], b["reference"]["loss"], rel_tol=1e-3)  # same loss, two formulations
        assert b["analytic_NxN_bytes_fp32"] == 4 * b["rows_N"] ** 2
    assert r["views"]["render_pairs_per_s"] > 0 and r["views"]["fed_over_synthetic"] > 0
    assert r["e2e"]["first_run"]["checkpoint_step"] == 2 and r["e2e"]["reloaded"]["checkpoint_step"] == 4
    assert r["e2e"]["reloaded"]["views_on"] == "device" and r["e2e"]["reloaded"]["features_finite"]
    assert 0 <= r["e2e"]["resumed_run"]["knn_top1"] <= 100 and r["e2e"]["resumed_run"]["last_images_per_s"] > 0

    grid = r["grid"]
    assert len(grid["trials"]) == 4 and not grid["failed"]
    assert {t["steps"] for t in grid["trials"]} == {grid["plan"]["steps"]}  # every trial the same budget
    assert {(row["row"], row["n"]) for row in grid["table"]} == {("a", 2), ("e", 2)}
    assert all(0 <= t["eval.knn_top1"] <= 100 and 0 <= t["eval.lin_top1"] <= 100 for t in grid["trials"])
    assert {(d["first"], d["second"]) for d in grid["paired"]} == {("e", "a")}
    md = (out / "kit.md").read_text()
    assert "| row | seeds | kNN (ours) | LIN (ours) |" in md and "| e − a |" in md and "## e2e" in md
    assert (out / "ablation_table.csv").read_text().startswith("row,n,failed")


def test_a_failing_section_is_recorded_and_the_kit_goes_on(tmp_path):
    mode = sizes(smoke=True)
    mode["loss_memory"]["dim"] = -1  # torch.randn(rows, -1) raises inside the section
    kit = run_kit(tmp_path / "out", tmp_path / "work", "cpu", True, ["loss_memory", "views"], mode, {})
    failed, after = kit["sections"]["loss_memory"], kit["sections"]["views"]
    assert failed["status"] == "error" and "RuntimeError" in failed["error"] and "Traceback" in failed["error"]
    assert after["status"] == "ok" and after["results"]["render_pairs_per_s"] > 0
    stored = json.loads((tmp_path / "out" / "kit.json").read_text())
    assert stored["sections"]["loss_memory"]["status"] == "error"
    assert "| loss_memory | error |" in (tmp_path / "out" / "kit.md").read_text()


@pytest.mark.parametrize("budget", [2.0])
def test_an_overrunning_section_is_killed_with_its_figures_so_far(tmp_path, budget):
    mode = sizes(smoke=True)
    mode["step"]["steps"] = 10_000  # far past the budget
    sec = run_section("step", budget, tmp_path, "cpu", mode)
    assert sec["status"] == "timeout" and "killed after its budget" in sec["error"]
    assert budget <= sec["wall_s"] < budget + 5
    assert "started" in sec["results"]  # what the section wrote before the kill is kept


def test_full_sizes_configs_validate():
    """Every config the GPU run builds is valid here, before a scarce GPU call finds a typo."""
    from siamim.config import load_config
    from siamim.orchestration.ablation.rows import parse_rows, row_config

    full = sizes(smoke=False)
    step = load_config(full["step"]["config"], ["run.num_workers=1", *full["step"]["overrides"]])
    assert (step.data.img_size, step.model.patch_size, step.model.embed_dim) == (224, 16, 768)
    views = full["views"]
    cfg = load_config(
        views["config"],
        [
            f"train.batch_size={views['batch']}",
            "run.num_workers=1",
            f"data.img_size={views['size']}",
            *views["overrides"],
        ],
    )
    assert cfg.train.batch_size == 128 and cfg.model.embed_dim == 768
    e2e = load_config(full["e2e"]["config"], ["train.device=cuda", *full["e2e"]["overrides"]])
    assert e2e.data.views_on == "device" and full["e2e"]["first_steps"] < full["e2e"]["total_steps"] <= 60000 // 256
    grid = full["grid"]
    rows = parse_rows(grid["rows"])
    assert len(rows) * grid["seeds"] % grid["workers"] == 0  # whole waves of trials
    for row in rows:
        assert row_config(row, [*grid["overrides"], "train.device=cuda", "eval.device=cuda"]).data.views_on == "device"
    assert sum(full["budgets"].values()) - full["budgets"]["grid"] < full["total_budget_s"] < 480


def test_grid_steps_fill_the_budget():
    from benchmarks.kit.grid import choose_steps

    calibs = [{"step_s": 0.05, "overhead_s": 2.0, "eval_s": 8.0}, {"step_s": 0.1, "overhead_s": 3.0, "eval_s": 7.0}]
    # 33 trials on 11 workers: 3 waves of (3 + 8 + 0.1 s x steps) in 180 s, 10 % spare
    assert choose_steps(calibs, 33, 11, 180.0, 20, 20000) == int(0.9 * (60 - 11) / 0.1)
    assert choose_steps(calibs, 33, 11, 5.0, 20, 20000) == 20  # never below the floor
