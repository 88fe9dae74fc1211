"""scripts/curve_report.py: learning curves out of MLflow, their levels, RankMe against kNN, the plot."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "curve_report.py"


@pytest.fixture(scope="module")
def script():
    return runpy.run_path(str(SCRIPT))


def test_spearman_ranks_with_ties(script):
    rho = script["spearman"]
    assert rho([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rho([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rho([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)  # ties get average ranks


def test_export_reads_the_grids_child_runs_and_the_report_finds_the_crossing(script, tmp_path, capsys):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("siamim-ablation")
    for row, knn, rank in (
        ("i", [66.0, 70.0, 72.5], [20.0, 25.0, 30.0]),
        ("a", [68.0, 69.0, 69.5], [30.0, 28.0, 27.0]),
    ):
        run = client.create_run(exp, tags={"ablation.grid": "g", "ablation.row": row, "ablation.seed": "0"})
        rid = run.info.run_id
        client.log_param(rid, "eval.monitor_bank", "200")
        for k, (v, r) in enumerate(zip(knn, rank, strict=True), start=1):
            client.log_metric(rid, "knn_monitor", v, step=10 * k)
            client.log_metric(rid, "rankme_monitor", r, step=10 * k)
            client.log_metric(rid, "epoch", float(k), step=10 * k)
        client.log_metric(rid, "eval.knn_top1", knn[-1] + 5)
        client.set_terminated(rid, "FINISHED")
    other = client.create_run(exp, tags={"ablation.grid": "another", "ablation.row": "k", "ablation.seed": "0"})
    client.log_metric(other.info.run_id, "knn_monitor", 1.0, step=10)
    mlflow.set_tracking_uri(None)

    data = tmp_path / "curves"
    assert script["main"](["export", "--tracking-uri", uri, "--grid", "g", "--out", str(data)]) == 0
    lines = (data / "curves.csv").read_text().splitlines()
    assert lines[0] == "row,seed,step,epoch,knn_monitor,rankme_monitor" and len(lines) == 7  # 2 trials x 3 points
    assert all(not ln.startswith("k,") for ln in lines)  # another grid's run is not read
    (data / "levels.csv").write_text("representation,knn_monitor,rankme_monitor\nrandom,65.0,15.0\npixels,80.0,300\n")
    out = tmp_path / "out"
    assert script["main"](["report", "--curves", str(data), "--out", str(out)]) == 0
    md = (out / "curves.md").read_text()
    assert md.splitlines()[0] == "| epoch | i: kNN | i: RankMe | a: kNN | a: RankMe | i − a (kNN) |"
    assert "| 3 | 72.50 | 30.0 | 69.50 | 27.0 | +3.00 |" in md  # epoch 3: i then a, i − a
    assert "row i: 5 kNN points above random init: epoch 2" in md and "Spearman(RankMe, kNN) +1.00" in md
    assert "row a: 5 kNN points above random init: not within these epochs; Spearman(RankMe, kNN) -1.00" in md
    assert "row i (seed 0) at the end, full sets: kNN 77.50" in md
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="no trial runs tagged ablation.grid=missing"):
        script["main"](["export", "--tracking-uri", uri, "--grid", "missing", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="no curves.csv"):
        script["main"](["report", "--curves", str(tmp_path / "x"), "--out", str(out)])


def test_the_published_curves_are_what_the_committed_data_regenerate(script, tmp_path):
    """docs/results.md section 6 (the learning curves) comes from docs/results/curves-ia (its README)."""
    docs = SCRIPT.parents[1] / "docs"
    assert script["main"](["report", "--curves", str(docs / "results" / "curves-ia"), "--out", str(tmp_path)]) == 0
    section = (docs / "results.md").read_text().split("## 6.")[1].split("\n## ")[0]
    generated = [ln for ln in (tmp_path / "curves.md").read_text().splitlines() if ln.strip()]
    assert len(generated) > 10
    for line in generated:
        assert line in section, line
