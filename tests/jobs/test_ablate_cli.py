"""jobs/ablate.py without a cluster: bad flags fail before anything starts (naming the flag), the dry run,
the ablation rows, and the assembled table / paired differences / plot (pure functions)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import pytest

from siamim.cli import EXIT_BAD_INPUT
from siamim.eval.protocols import names, protocols
from siamim.orchestration.ablation import table as tbl
from siamim.orchestration.ablation.rows import (
    BASELINES,
    KEY_COMPARISONS,
    ROWS,
    SWITCH_KEYS,
    parse_rows,
    row_config,
    switches_of,
)
from tests.jobs.helpers import REPO

ABLATE = REPO / "jobs" / "ablate.py"


def load_cli():
    spec = importlib.util.spec_from_file_location("ablate_cli", ABLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_lists_the_flags():
    proc = subprocess.run([sys.executable, str(ABLATE), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in (
        "--rows",
        "--seeds",
        "--steps",
        "--epochs",
        "--protocols",
        "--workers-per-trial",
        "--cpus-per-worker",
        "--gpus-per-worker",
        "--max-concurrent",
        "--storage",
        "--tracking-uri",
        "--name",
        "--resume",
        "--max-retries",
        "--dry-run",
        "ray job submit",
        "tensorboard",
    ):
        assert flag in proc.stdout, flag


def test_the_tensorboard_the_help_names_is_installed():
    """The grid's help and summary print ``tensorboard --logdir ...``: the pinned set installs the viewer."""
    from pathlib import Path

    exe = Path(sys.executable).parent / "tensorboard"
    assert exe.is_file(), f"{exe} missing: tensorboard is not in the pinned set (pyproject.toml)"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip()[:1].isdigit(), proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--rows", "i,z"], "--rows: unknown row 'z'"),
        (["--rows", "i", "--seeds", "0"], "--seeds 0"),
        (["--rows", "i", "--gpus-per-worker", "1"], "--gpus-per-worker 1"),  # this machine has no GPU
        (["--rows", "i", "--workers-per-trial", "64"], "--workers-per-trial 64"),  # more CPUs than the machine
        (["--rows", "i", "--protocols", "knn,linn"], "--protocols: unknown protocol 'linn'"),
        (["--rows", "i", "--steps", "0"], "--steps 0"),
        (["--rows", "i", "--steps", "100000"], "--steps 100000: row i"),  # past the epochs' plan: not cut short
        (["--rows", "i", "model.deptj=2"], "model.deptj"),
        (["--rows", "i", "--max-concurrent", "0"], "--max-concurrent 0"),
    ],
)
def test_bad_flags_fail_before_anything_starts(args, flag, tmp_path, capsys):
    import ray

    cli = load_cli()
    storage = tmp_path / "store"
    db = tmp_path / "mlflow.db"
    rc = cli.main([*args, "--name", "bad", "--storage", str(storage), "--tracking-uri", f"sqlite:///{db}"])
    err = capsys.readouterr().err
    assert rc == EXIT_BAD_INPUT, err
    assert flag in err, err
    assert not ray.is_initialized()  # no Ray started, so no trial either
    assert not (storage / "bad").exists()  # no grid directory, no grid record
    assert not db.exists()  # no MLflow parent run


@pytest.mark.parametrize("bad", ["a b", "../up", "x/y", ".", "semi;colon"])
def test_grid_names_a_directory_ray_or_a_shell_cannot_carry_are_refused(bad, tmp_path, capsys):
    cli = load_cli()
    storage = tmp_path / "store"
    rc = cli.main(
        ["--rows", "i", f"--name={bad}", "--storage", str(storage), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    )
    err = capsys.readouterr().err
    assert rc == EXIT_BAD_INPUT and f"--name={bad!r} is invalid" in err, err
    assert not storage.exists() and not (tmp_path / "m.db").exists()


def test_dry_run_prints_trials_resources_and_packing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --storage (runs/ablation) and MLflow store are relative to it
    cli = load_cli()
    rc = cli.main(
        [
            "--rows",
            "e,a",
            "--seeds",
            "3",
            "--steps",
            "10",
            "--gpus-per-worker",
            "0",
            "--cpus-per-worker",
            "0.5",
            "--workers-per-trial",
            "2",
            "--dry-run",
            "--name",
            "dry",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2 rows x 3 seeds = 6 trials" in out
    assert "2 Ray Train worker(s) x (0.5 CPU) = 1 CPU" in out
    for key in ("a/0", "a/2", "e/0", "e/2"):
        assert f"| {key} |" in out
    assert out.index("| a/0 |") < out.index("| e/0 |")  # table order, whatever order --rows gave
    assert "fit at once" in out and "wave(s)" in out
    assert list(tmp_path.iterdir()) == []  # no grid directory, no MLflow store


def test_rows_parse_and_resolve_to_their_switches():
    assert parse_rows("all") == list(ROWS)
    assert parse_rows("k,a-c") == ["a", "b", "c", "k"]
    for row in ROWS:  # every preset sets exactly the paper's switches for its row
        assert switches_of(row_config(row)) == ROWS[row].switches, row
        assert set(ROWS[row].switches) == set(SWITCH_KEYS)
    assert switches_of(row_config("i"))["loss.type"] == "unigrad"
    assert switches_of(row_config("j"))["loss.type"] != "unigrad"
    assert {a for a, _, _ in KEY_COMPARISONS} | {b for _, b, _ in KEY_COMPARISONS} <= set(ROWS)


def test_the_mae_baseline_is_a_grid_row_by_name():
    assert parse_rows("a,mae,i") == ["a", "i", "mae"]
    assert "mae" not in parse_rows("all") and "mae" not in parse_rows("a-k")
    assert switches_of(row_config("mae")) == BASELINES["mae"].switches
    assert row_config("mae").model.query_pos == "grid" and row_config("a").model.query_pos == "relative"
    with pytest.raises(ValueError, match="the baselines mae"):
        parse_rows("maee")
    results = [{"row": r, "seed": 0, "eval.knn_top1": v} for r, v in (("mae", 70.0), ("a", 69.0), ("i", 72.0))]
    table = tbl.assemble(results, ["knn"])
    assert [r["row"] for r in table] == ["a", "i", "mae"]
    assert table[-1]["paper"]["LIN"] == 62.5
    assert "main table" in tbl.to_markdown(table, ["knn"])


def _results():
    # row e beats row a by exactly 2 points on every seed; i and j tie on seed 0 and differ on seed 1
    out = []
    for seed, base in enumerate((50.0, 54.0, 52.0)):
        out.append({"row": "a", "seed": seed, "eval.knn_top1": base})
        out.append({"row": "e", "seed": seed, "eval.knn_top1": base + 2.0})
    out += [
        {"row": "i", "seed": 0, "eval.knn_top1": 60.0},
        {"row": "j", "seed": 0, "eval.knn_top1": 61.0},
        {"row": "i", "seed": 1, "eval.knn_top1": 63.0},
    ]
    return out


def test_table_is_mean_and_std_over_seeds_with_the_paper_columns():
    table = tbl.assemble(_results(), ["knn"], failed=[{"row": "j", "seed": 1}])
    by = {r["row"]: r for r in table}
    assert [r["row"] for r in table] == ["a", "e", "i", "j"]
    m, s = by["a"]["ours"]["kNN"]
    assert m == pytest.approx(52.0) and s == pytest.approx(2.0)  # sample std of 50, 54, 52
    assert by["i"]["ours"]["kNN"] == pytest.approx((61.5, math.sqrt(4.5)))
    assert by["j"]["n"] == 1 and by["j"]["failed"] == [1]
    md = tbl.to_markdown(table, ["knn"])
    assert "| a | 3 | 52.00 ± 2.00 | 82.8 | 62.3 | 47.3 | 42.5 |" in md
    assert "| j | 1 (1 failed) |" in md
    csv_lines = tbl.to_csv(table, ["knn"]).splitlines()
    assert csv_lines[0].startswith("row,n,failed,kNN mean,kNN std,paper FT,paper LIN")
    assert csv_lines[1].startswith("a,3,0,52.0000,2.0000,82.8,62.3")


def test_paired_differences_pair_by_seed_and_check_the_paper_sign():
    diffs = {(d["first"], d["second"]): d for d in tbl.paired_differences(_results(), ["knn"])}
    assert set(diffs) == {("e", "a"), ("i", "j")}  # the others lack a row
    ea = diffs["e", "a"]
    assert ea["n"] == 3 and ea["mean"] == pytest.approx(2.0) and ea["std"] == pytest.approx(0.0)
    assert ea["paper_column"] == "LIN" and ea["paper_diff"] == pytest.approx(7.3) and ea["sign_matches"] is True
    ij = diffs["i", "j"]
    assert ij["n"] == 1 and ij["mean"] == pytest.approx(-1.0)  # only seed 0 has both rows
    assert ij["sign_matches"] is False  # the paper has i above j on LIN
    md = tbl.paired_markdown(list(diffs.values()))
    assert "| e − a |" in md and "+2.00 ± 0.00" in md and "**no**" in md


def test_every_registered_protocol_is_a_column_of_the_table():
    heads = tbl.headline_keys(names())
    assert len(heads) == len(names()) and len({title for _, title, _ in heads}) == len(heads)
    for (key, _, paper), p in zip(heads, protocols(), strict=True):
        assert key == f"eval.{p.headline.key}" and paper in tbl.PAPER_COLUMNS, p.name
    assert tbl.headline_keys(["robust", "knn"]) == [("eval.robust_mca", "robust mCA", "FT"), heads[0]]


def test_plot_writes_a_png(tmp_path):
    path = tbl.plot(_results(), ["knn", "lin"], tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plot_draws_the_floors_and_its_axis_spans_them(tmp_path):
    floors = {"raw pixels": {"eval.knn_top1": 40.0}, "random init": {"eval.knn_top1": 30.0, "eval.lin_top1": 20.0}}
    path = tbl.plot(_results(), ["knn"], tmp_path / "plot.png", floors=floors)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    seeds = [r["eval.knn_top1"] for r in _results()]
    lo, hi = tbl.y_limits([*seeds, 40.0, 30.0])
    assert lo < 30.0 and hi > max(seeds)
    assert tbl.y_limits(seeds)[0] > 30.0  # without the floors the axis would start above them
