"""jobs/search.py without a cluster: bad spaces and flags exit 2 naming the key, before Ray, torch or MLflow
are imported; the sampler is seeded and crosses grid values; the dry run prints the trials; the table, plot
and the found preset's text (pure functions)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from siamim.cli import EXIT_BAD_INPUT
from siamim.config import load_config
from siamim.orchestration.search import report as rep
from siamim.orchestration.search.space import SearchInputError, parse_space, sample
from tests.jobs.helpers import REPO

SEARCH = REPO / "jobs" / "search.py"

# Runs jobs/search.py's main() in a fresh interpreter and says which heavy modules it had imported.
PROBE = """
import sys, runpy
sys.argv = ["jobs/search.py", *sys.argv[1:]]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as e:
    code = e.code
print("RC", code, "HEAVY", sorted(m for m in ("torch", "ray", "mlflow") if m in sys.modules))
"""


def run_search(tmp_path, space_text: str | None, *args: str) -> tuple[int, str, str]:
    argv = list(args)
    if space_text is not None:
        (tmp_path / "space.yaml").write_text(space_text)
        argv = ["--space", str(tmp_path / "space.yaml"), *argv]
    storage, db = tmp_path / "store", tmp_path / "mlflow.db"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(script=str(SEARCH)), *argv, "--name", "bad", "--storage", str(storage)]
        + ["--tracking-uri", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert not (storage / "bad").exists() and not db.exists()  # no search directory, no MLflow parent run
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "space, args, named",
    [
        (
            "optim.blrr: {loguniform: [1.0e-4, 1.0e-3]}\n",
            [],
            "optim.blrr is not a config key; did you mean 'optim.blr'",
        ),
        ("optim.ema_m0: {choice: []}\n", [], "optim.ema_m0: choice needs a non-empty list"),
        ("views.crop_min: {uniform: [0.5, 0.2]}\n", [], "views.crop_min: uniform [0.5, 0.2]: low must be below high"),
        ("optim.blr: {loguniform: [0, 1.0e-3]}\n", [], "optim.blr: loguniform [0, 0.001]: low must be > 0"),
        ("optim.blr: {normal: [0, 1]}\n", [], "optim.blr: {'normal': [0, 1]} is not a sampler"),
        ("model.depth: {randint: [2, 3.5]}\n", [], "model.depth: randint needs whole numbers"),
        ("model.depth: {choice: [2, deep]}\n", [], "model.depth: choice value 'deep' gives an invalid config"),
        ("mask.ratio: {uniform: [0.5, 1.5]}\n", [], "mask.ratio: uniform value 1.5 gives an invalid config"),
        ("run.num_workers: {choice: [1, 2]}\n", [], "run.num_workers: run.* keys are set by the search's flags"),
        ("- optim.blr\n", [], "must be a non-empty mapping"),
        ("optim.blr: {choice: [0.001]}\n", ["--reduction-factor", "1"], "--reduction-factor 1: must be > 1"),
        ("optim.blr: {choice: [0.001]}\n", ["model.deptj=2"], "model.deptj"),
        (None, [], "--space FILE is required"),
        (None, ["--resume", "old", "--dry-run"], "--dry-run and --resume: a resumed search keeps its trials"),
    ],
)
def test_bad_spaces_exit_2_naming_the_key_before_anything_heavy(space, args, named, tmp_path):
    rc, out, err = run_search(tmp_path, space, *args)
    assert rc == 0, err  # the probe itself ran
    assert f"RC {EXIT_BAD_INPUT} HEAVY []" in out, out + err  # exit 2; torch, Ray and MLflow never imported
    assert named in err, err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback


def test_a_sampled_config_that_breaks_a_cross_key_rule_is_refused(tmp_path):
    # each value is valid with the preset's others; 10 % of 49 patches (5) cannot hold a block of 6
    rc, out, err = run_search(tmp_path, "mask.ratio: {grid: [0.1, 0.6]}\nmask.min_block: {grid: [4, 6]}\n")
    assert f"RC {EXIT_BAD_INPUT} HEAVY []" in out, out + err
    assert "sample 1 (mask.ratio=0.1, mask.min_block=6) gives an invalid config: mask.min_block=6" in err, err


def test_sampling_is_seeded_within_bounds_and_crosses_the_grid():
    base = load_config("tiny")
    space = {
        "optim.blr": {"loguniform": [1.0e-4, 3.0e-3]},
        "optim": {"ema_m0": {"choice": [0.99, 0.995]}},  # nested sections are dotted keys too
        "model.depth": {"randint": [2, 4]},
        "loss.type": {"grid": ["unigrad", "l2"]},
    }
    dims = parse_space(space, base)
    first = sample(dims, 5, seed=3)
    assert first == sample(dims, 5, seed=3) != sample(dims, 5, seed=4)
    assert len(first) == 10 and [s["loss.type"] for s in first[:2]] == ["unigrad", "l2"]
    assert first[0]["optim.blr"] == first[1]["optim.blr"]  # one draw, crossed with both grid values
    assert list(first[0]) == ["optim.blr", "optim.ema_m0", "model.depth", "loss.type"]
    for s in first:
        assert 1.0e-4 <= s["optim.blr"] <= 3.0e-3 and s["optim.ema_m0"] in (0.99, 0.995) and 2 <= s["model.depth"] <= 4
    with pytest.raises(SearchInputError, match="optim.blr"):
        parse_space({"optim.blr": {"uniform": [1.0e-3, 1.0e-3]}}, base)


def test_dry_run_prints_the_trials_budget_rungs_and_packing(tmp_path):
    (tmp_path / "space.yaml").write_text("optim.blr: {loguniform: [1.0e-4, 3.0e-3]}\noptim.ema_m0: {choice: [0.99]}\n")
    proc = subprocess.run(
        [sys.executable, str(SEARCH), "--space", str(tmp_path / "space.yaml"), "--num-samples", "3", "--steps", "40"]
        + ["--grace-period", "5", "--name", "dry", "--storage", str(tmp_path / "s"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "search 'dry': 3 trials" in out and "budget 40 steps per trial" in out
    assert "compares trials at steps 5, 10, 20" in out and "eval.monitor_every=5" in out
    assert "configs/found/dry.yaml (--config found/dry)" in out
    assert len([line for line in out.splitlines() if line.startswith("| t00")]) == 3
    assert not (tmp_path / "s").exists()


def test_a_dry_run_refuses_a_trial_this_machine_cannot_fit(tmp_path):
    (tmp_path / "space.yaml").write_text("optim.blr: {choice: [0.001]}\n")
    proc = subprocess.run(
        [sys.executable, str(SEARCH), "--space", str(tmp_path / "space.yaml"), "--steps", "40", "--grace-period", "5"]
        + ["--workers-per-trial", "64", "--dry-run", "--name", "big", "--storage", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == EXIT_BAD_INPUT, proc.stdout + proc.stderr  # as the search itself would refuse it
    assert "one trial does not fit: --workers-per-trial 64 x --cpus-per-worker 1 needs 64 CPUs" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_the_budget_holds_the_grace_period_and_lies_within_the_plan(tmp_path):
    (tmp_path / "space.yaml").write_text("optim.blr: {choice: [0.001]}\n")
    proc = subprocess.run(
        [sys.executable, str(SEARCH), "--space", str(tmp_path / "space.yaml"), "--steps", "10"]
        + ["--grace-period", "10", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == EXIT_BAD_INPUT and "--grace-period 10: must be below the budget of 10" in proc.stderr
    proc = subprocess.run(  # tiny: 1 epoch of 234 steps; a longer --steps would be cut short
        [sys.executable, str(SEARCH), "--space", str(tmp_path / "space.yaml"), "--steps", "300", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == EXIT_BAD_INPUT and "--steps 300: past the end of the plan" in proc.stderr, proc.stderr


def trial(index, status, steps, metric, history):
    return {
        "index": index,
        "name": f"t{index:03d}",
        "values": {"optim.blr": 10.0**-index},
        "status": status,
        "steps": steps,
        "metric": metric,
        "history": history,
    }


def test_best_is_among_trials_that_ran_the_budget_and_the_table_says_why(tmp_path):
    trials = [
        trial(0, rep.FINISHED, 8, 40.0, [(2, 30.0), (8, 40.0)]),
        trial(1, rep.STOPPED, 2, 45.0, [(2, 45.0)]),  # higher, but after fewer steps: not comparable
        trial(2, rep.FAILED, 1, None, []),
        trial(3, rep.FINISHED, 8, 42.0, [(2, 33.0), (8, 42.0)]),
    ]
    best = rep.best_trial(trials, "max")
    assert best["index"] == 3 and rep.best_trial(trials, "min")["index"] == 0
    assert rep.best_trial(trials[1:3], "max") is None
    md = rep.table_markdown(trials, ["optim.blr"], "knn_monitor", 8, best)
    assert "| t003 **best** | 0.001 | 42 | 8 / 8 | finished |" in md
    assert "| t001 | 0.1 | 45 | 2 / 8 | stopped early |" in md and "| t002 | 0.01 | - | 1 / 8 | failed |" in md
    csv_text = rep.table_csv(trials, ["optim.blr"], "knn_monitor", 8)
    assert csv_text.splitlines()[2].startswith("t001,0.1,45.0,2,8,stopped early,True")
    assert rep.plot(trials, "knn_monitor", 8, tmp_path / "p.png", best).read_bytes()[:4] == b"\x89PNG"


def test_the_found_preset_text_loads_as_a_config_without_the_trials_locations(tmp_path):
    from siamim.config import to_dict

    cfg = load_config("tiny", ["run.name=t003", "run.storage=/x/pretrain", "optim.blr=0.002"])
    text = rep.preset_text(to_dict(cfg), {"found by": "jobs/search.py --name s", "best": "t003"})
    assert text.startswith("# found by: jobs/search.py --name s\n# best: t003\n")
    (tmp_path / "p.yaml").write_text(text)
    loaded = load_config(tmp_path / "p.yaml")
    assert loaded.optim.blr == 0.002 and loaded.run.name is None and loaded.run.storage == "runs/ray"
