"""jobs/evaluate.py on every kind of --checkpoint this issue adds: a registered model (models:/), a timm
export folder, the MLflow run's encoder/ artifact, official SiameseIM and MAE release files."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from siamim.orchestration.tracking.registry import RegistryError, register_encoder, resolve_model_uri
from siamim.timm_export import save_timm_encoder
from tests.foreign_layouts import mae_checkpoint, official_siamim_checkpoint
from tests.jobs.test_evaluate import QUICK, _job, _read_csv
from tests.test_timm_export import _training_state


def _knn(out) -> float:
    return next(float(r["value"]) for r in _read_csv(out / "evaluation.csv") if r["key"] == "knn_top1")


def test_registered_model_evaluates_through_models_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("reg", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp, run_name="pretrain").info.run_id
    state, _ = _training_state(step=5)
    folder = save_timm_encoder(tmp_path / "export" / "encoder", state)
    client.log_artifacts(run, str(folder), "encoder")  # what the pretraining job logs
    assert register_encoder(uri, run, "tiny-enc", tags={"step": 5}) == "1"
    assert register_encoder(uri, run, "tiny-enc") == "2"  # a second version of the same name
    assert resolve_model_uri("models:/tiny-enc/1", uri) == (run, "encoder", "1")
    assert resolve_model_uri("models:/tiny-enc/latest", uri)[2] == "2"
    with pytest.raises(RegistryError, match="no such registered model version"):
        resolve_model_uri("models:/tiny-enc/9", uri)

    job = _job()
    common = ["--protocols", "knn", "--tracking-uri", uri, *QUICK]
    assert job.main(["--checkpoint", "models:/tiny-enc/1", "--out", str(tmp_path / "o1"), "--pictures", *common]) == 0
    drawn = sorted(p.name for p in (tmp_path / "o1" / "pictures" / "checkpoint").iterdir())
    assert drawn == ["attention.png", "correspondence.png", "pca.png"]
    evaluation = client.get_run(run).data.tags["eval.from_run_id"]  # the evaluation's own (child) run
    logged = {a.path for a in client.list_artifacts(evaluation, "eval/pictures/checkpoint")}
    assert logged == {f"eval/pictures/checkpoint/{name}" for name in drawn}
    report = open(client.download_artifacts(run, "report.html", str(tmp_path))).read()  # with its evaluation's table
    assert "<h2>Evaluation</h2>" in report and "eval/pictures/checkpoint/pca.png" in report
    assert job.main(["--checkpoint", run, "--out", str(tmp_path / "o2"), *common]) == 0  # run id: encoder/
    assert job.main(["--checkpoint", str(folder), "--out", str(tmp_path / "o3"), *common]) == 0  # the folder
    assert _knn(tmp_path / "o1") == _knn(tmp_path / "o2") == _knn(tmp_path / "o3")
    # models:/ and the run id set the headline of the run the version came from; a bare folder names no run
    assert [m.step for m in client.get_metric_history(run, "eval.knn_top1")] == [5, 5]
    assert job.main(["--checkpoint", "models:/nope/1", "--out", str(tmp_path / "o4"), *common]) == 2


@pytest.mark.parametrize("make", [official_siamim_checkpoint, mae_checkpoint], ids=["siamim", "mae"])
def test_official_release_checkpoints_evaluate(tmp_path, monkeypatch, capsys, make):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.save(make(), tmp_path / "release.pth")
    rc = _job().main(
        ["--checkpoint", str(tmp_path / "release.pth"), "--protocols", "knn", "--out", str(tmp_path), *QUICK]
    )
    assert rc == 0, capsys.readouterr().err
    assert 10.0 < _knn(tmp_path) <= 100.0  # random weights on 16x16 Fashion-MNIST: above chance, below perfect
    torch.save({"model": {"fc.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    assert _job().main(["--checkpoint", str(tmp_path / "other.pth"), "--protocols", "knn", *QUICK]) == 2
    assert "neither a siamim checkpoint" in capsys.readouterr().err
