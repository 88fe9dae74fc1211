"""scripts/grid_report.py: grids at one budget make one table, paired differences and a plot with the floors."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "grid_report.py"
SPEC = {"epochs": 1.0, "steps": None, "overrides": [], "protocols": ["knn", "lin"], "workers_per_trial": 1}


@pytest.fixture(scope="module")
def report():
    return runpy.run_path(str(SCRIPT))


def grid(tmp_path: Path, name: str, trials: list[tuple], **spec) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "siamim_ablation.json").write_text(json.dumps({"name": name, "spec": {**SPEC, **spec}}))
    lines = ["row,seed,status,eval.knn_top1,eval.lin_top1"] + [",".join(map(str, t)) for t in trials]
    (d / "ablation_trials.csv").write_text("\n".join(lines) + "\n")
    return d


def test_two_grids_make_one_table_with_paired_differences_and_floors(report, tmp_path, capsys):
    first = grid(tmp_path, "g1", [("a", 0, "FINISHED", 70.0, 75.0), ("a", 1, "FINISHED", 72.0, 76.0)])
    second = grid(
        tmp_path,
        "g2",
        [("e", 0, "FINISHED", 73.0, 77.0), ("e", 1, "FINISHED", 74.0, 79.0), ("d", 0, "FAILED", "", "")],
    )
    floors = tmp_path / "evaluation.csv"
    floors.write_text(
        "representation,protocol,key,paper_column,metric,value\n"
        "pixels,knn,knn_top1,-,kNN,80.5\npixels,lin,lin_top1,LIN,LIN,81\nrandom,knn,knn_top1,-,kNN,60.25\n"
    )
    out = tmp_path / "out"
    assert (
        report["main"](["--grid", str(first), "--grid", str(second), "--floors", str(floors), "--out", str(out)]) == 0
    )
    table = (out / "table.md").read_text()
    assert "| a | 2 | 71.00 ± 1.41 |" in table and "| e | 2 | 73.50 ± 0.71 |" in table
    assert "| d |" not in table  # the failed trial is not a row
    assert "raw pixels: kNN 80.50, LIN 81.00" in table and "random init: kNN 60.25" in table
    paired = (out / "paired.md").read_text()
    assert "| e − a |" in paired and "+2.50 ± 0.71" in paired  # kNN: +3 and +2
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_grids_at_different_budgets_or_with_the_same_trial_are_refused(report, tmp_path):
    first = grid(tmp_path, "g1", [("a", 0, "FINISHED", 70.0, 75.0)])
    longer = grid(tmp_path, "g2", [("e", 0, "FINISHED", 73.0, 77.0)], epochs=3.0)
    with pytest.raises(SystemExit, match=r"epochs=3.0 but --grid .*g1 has 1.0"):
        report["main"](["--grid", str(first), "--grid", str(longer), "--out", str(tmp_path / "o")])
    again = grid(tmp_path, "g3", [("a", 0, "FINISHED", 71.0, 75.0)])
    with pytest.raises(SystemExit, match="trials in more than one grid: a/0"):
        report["main"](["--grid", str(first), "--grid", str(again), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="no siamim_ablation.json"):
        report["main"](["--grid", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])


def test_the_published_results_are_what_the_committed_data_regenerate(report, tmp_path):
    """docs/results.md's seven-row table and paired differences come from docs/results/ (its README)."""
    docs = SCRIPT.parents[1] / "docs"
    data = docs / "results"
    grids = [data / "noise-floor", data / "rows-dehj"]
    floors = data / "baselines" / "evaluation.csv"
    args = [a for g in grids for a in ("--grid", str(g))]
    assert (
        report["main"]([*args, "--floors", str(floors), "--out", str(tmp_path), "--plot", str(tmp_path / "p.png")]) == 0
    )
    published = (docs / "results.md").read_text()
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in (tmp_path / "table.md").read_text().splitlines()]
    rows = [c for c in cells if len(c) > 3 and len(c[0]) == 1 and c[0].isalpha()]
    assert [r[0] for r in rows] == list("adehijk")
    for row, _, knn, lin, *_ in rows:  # kNN and LIN mean ± std in the published table's line of that row
        line = next(ln for ln in published.splitlines() if ln.startswith(f"| {row} | "))
        assert knn in line and lin in line, (row, knn, lin, line)
    trials = [t for g in grids for t in report["read_grid"](g)[1]]
    for d in report["tbl"].paired_differences(trials, ["knn", "lin"]):
        shown = f"{d['mean']:+.2f} ± {d['std']:.2f}".replace("-", "−")
        assert shown in published, (d["first"], d["second"], d["protocol"], shown)


def test_the_six_seed_i_minus_j_section_is_what_its_committed_data_regenerate(report, tmp_path):
    """docs/results.md section 2b (rows i and j x 6 seeds) comes from docs/results/rows-ij6."""
    docs = SCRIPT.parents[1] / "docs"
    data = docs / "results" / "rows-ij6"
    assert report["main"](["--grid", str(data), "--out", str(tmp_path), "--plot", str(tmp_path / "p.png")]) == 0
    section = (docs / "results.md").read_text().split("## 2b.")[1].split("\n## ")[0]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in (tmp_path / "table.md").read_text().splitlines()]
    rows = {c[0]: c for c in cells if len(c) > 3 and c[0] in ("i", "j")}
    assert sorted(rows) == ["i", "j"] and all(r[1] == "6" for r in rows.values())
    for row, (_, _, knn, lin, *_) in rows.items():
        line = next(ln for ln in section.splitlines() if ln.startswith(f"| {row} (six seeds) | "))
        assert knn in line and lin in line, (row, knn, lin, line)
    diffs = report["tbl"].paired_differences(report["read_grid"](data)[1], ["knn", "lin"])
    assert len(diffs) == 2 and all(d["n"] == 6 for d in diffs)
    for d in diffs:
        shown = f"{d['mean']:+.2f} ± {d['std']:.2f}".replace("-", "−")
        assert shown in section, (d["protocol"], shown)
