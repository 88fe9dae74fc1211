"""jobs/evaluate.py end to end: baselines, a checkpoint, MLflow logging (local sqlite store)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from siamim.checkpoint import ENCODER_PREFIX, FORMAT_VERSION, save_checkpoint
from siamim.config import to_dict
from siamim.model.encoder import build_encoder
from tests.eval.helpers import cfg

REPO = Path(__file__).resolve().parents[2]
QUICK = [
    "--limit-train",
    "500",
    "--limit-test",
    "200",
    "--ft-epochs",
    "0.5",
    "--quiet",
    "eval.lin.steps=100",
    "eval.lin.batch_size=128",
    "eval.lin.warmup_steps=10",
    "eval.fewshot.seeds=2",
    "eval.dense.train_mosaics=80",
    "eval.dense.test_mosaics=40",
    "eval.dense.epochs=2",
    "eval.robust.test_limit=50",
    "eval.ft.batch_size=64",
    "eval.ft.warmup_epochs=0.1",
    "eval.device=cpu",
]


def _job():
    spec = importlib.util.spec_from_file_location("evaluate_job", REPO / "jobs" / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _checkpoint(path: Path, run_id: str | None) -> Path:
    c = cfg()
    torch.manual_seed(0)
    enc = build_encoder(c.model, c.data.img_size)
    config = to_dict(c)
    config["eval"]["knn_k"] = 5  # a flat eval key of an older release: evaluation ignores the stored eval section
    state = {
        "format": FORMAT_VERSION,
        "step": 7,
        "config": config,
        "model": {ENCODER_PREFIX + k: v for k, v in enc.state_dict().items()},
    }
    if run_id:
        state["mlflow_run_id"] = run_id
    return save_checkpoint(path / "checkpoint_00000007" / "checkpoint.pt", state)


def test_pixel_baseline_end_to_end_writes_the_full_table(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rc = _job().main(["--baseline", "pixels", "--protocols", "all", "--out", str(tmp_path), *QUICK])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| protocol | paper column |" in printed and "| LIN |" in printed and "| FT |" in printed
    rows = _read_csv(tmp_path / "evaluation.csv")
    keys = {r["key"] for r in rows}
    for protocol in ("knn", "lin", "fewshot", "longtail", "dense", "ft", "robust"):
        assert f"{protocol}_wall_s" in keys
    assert {r["representation"] for r in rows} == {"pixels"}
    values = {r["key"]: float(r["value"]) for r in rows}
    assert values["knn_top1"] > 55.0 and 0.0 <= values["robust_mca"] <= 100.0
    assert (tmp_path / "evaluation.md").read_text().startswith("| protocol |")


def test_bad_arguments_fail_fast_with_the_fix(tmp_path, capsys):
    job = _job()
    assert job.main(["--baseline", "pixel", "--out", str(tmp_path)]) == 2
    assert "did you mean 'pixels'" in capsys.readouterr().err
    assert job.main(["--baseline", "pixels", "--protocols", "lin,fewshoot", "--out", str(tmp_path)]) == 2
    assert "did you mean 'fewshot'" in capsys.readouterr().err
    assert job.main(["--protocols", "knn"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert job.main(["--checkpoint", str(tmp_path / "missing.pt"), "--protocols", "knn"]) == 2
    assert "not an existing file" in capsys.readouterr().err


def _evaluations(client, exp: str, pre: str) -> list:
    """The evaluation child runs of ``pre``, oldest first."""
    runs = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{pre}'")
    return sorted(runs, key=lambda r: r.info.start_time)


def test_each_evaluation_is_its_own_child_run_and_sets_the_pretraining_runs_headline(tmp_path, monkeypatch):
    """Issue 19 item 3: evaluating twice (different --limit-train) keeps both tables and settings, each in its own
    child run of the pretraining run; the pretraining run's eval.* metrics and tags name the latest one."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("siamim-test", artifact_location=(tmp_path / "artifacts").as_uri())
    pre = client.create_run(exp, run_name="pretrain").info.run_id
    ckpt = _checkpoint(tmp_path / "ray", pre)

    job = _job()
    # 1. A checkpoint directory (Ray layout) that names its pretraining run, with the floors.
    rc = job.main(
        [
            "--checkpoint",
            str(ckpt.parent),
            "--baseline",
            "pixels,random",
            "--protocols",
            "knn,fewshot",
            "--tracking-uri",
            uri,
            "--out",
            str(tmp_path / "out1"),
            *QUICK,
        ]
    )
    assert rc == 0
    (first,) = _evaluations(client, exp, pre)
    m = first.data.metrics
    assert {
        "eval.knn_top1",
        "eval.pixels.knn_top1",
        "eval.random.knn_top1",
        "eval.fewshot_top1",
        "eval.knn_wall_s",
    } <= set(m)
    assert m["eval.pixels.knn_top1"] > m["eval.random.knn_top1"]
    assert first.info.run_name == "evaluation-1-evaluate-checkpoint-pixels-random"
    assert first.data.params["eval.train_limit"] == "500" and first.data.params["eval.test_limit"] == "200"
    assert first.data.params["evaluate.train_images"] == "500" and first.data.params["evaluate.step"] == "7"
    assert first.data.params["evaluate.protocols"] == "knn,fewshot"
    assert {a.path for a in client.list_artifacts(first.info.run_id, "eval")} == {
        "eval/evaluation.md",
        "eval/evaluation.csv",
    }
    table = Path(client.download_artifacts(first.info.run_id, "eval/evaluation.md", str(tmp_path / "dl"))).read_text()
    assert "| checkpoint | pixels | random |" in table
    parent = client.get_run(pre)
    assert parent.data.metrics["eval.knn_top1"] == m["eval.knn_top1"]
    assert client.get_metric_history(pre, "eval.knn_top1")[0].step == 7  # the checkpoint's step
    assert parent.data.tags["eval.from_run_id"] == first.info.run_id
    assert not client.list_artifacts(pre, "eval")  # the tables live in the evaluations' own runs

    # 2. Again, the MLflow run id as --checkpoint (artifact checkpoint/checkpoint.pt), other limits: a second record.
    client.log_artifact(pre, str(ckpt), "checkpoint")
    quick = [*QUICK]
    quick[quick.index("--limit-train") + 1] = "300"
    rc = job.main(
        ["--checkpoint", pre, "--protocols", "knn", "--tracking-uri", uri, "--out", str(tmp_path / "o2"), *quick]
    )
    assert rc == 0
    again, second = _evaluations(client, exp, pre)
    assert again.info.run_id == first.info.run_id and again.data.metrics == m  # the first is untouched
    assert second.info.run_name == "evaluation-2-evaluate-checkpoint"
    assert second.data.params["eval.train_limit"] == "300" and second.data.params["evaluate.train_images"] == "300"
    table = Path(client.download_artifacts(first.info.run_id, "eval/evaluation.md", str(tmp_path / "dl2"))).read_text()
    assert "| checkpoint | pixels | random |" in table  # the first table is still the first's
    parent = client.get_run(pre)
    assert parent.data.tags["eval.from_run_id"] == second.info.run_id
    assert parent.data.tags["eval.from_run_name"] == "evaluation-2-evaluate-checkpoint"
    assert parent.data.metrics["eval.knn_top1"] == second.data.metrics["eval.knn_top1"]
    assert [h.value for h in client.get_metric_history(pre, "eval.knn_top1")] == [
        m["eval.knn_top1"],
        second.data.metrics["eval.knn_top1"],
    ]
    report = open(client.download_artifacts(pre, "report.html", str(tmp_path / "dl3"))).read()
    assert "<h2>Evaluation</h2>" in report and "evaluation-2-evaluate-checkpoint" in report
    assert "| checkpoint | pixels |" not in report and "pixels" not in report.split("<h2>Evaluation</h2>")[1]


def test_checkpoint_whose_run_is_elsewhere_logs_to_a_new_tagged_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    foreign = "ab" * 16  # a run id from another tracking store
    ckpt = _checkpoint(tmp_path / "ray", foreign)
    rc = _job().main(
        [
            "--checkpoint",
            str(ckpt),
            "--protocols",
            "knn",
            "--tracking-uri",
            uri,
            "--experiment",
            "siamim-eval-test",
            "--out",
            str(tmp_path / "out"),
            *QUICK,
        ]
    )
    assert rc == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("siamim-eval-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["eval.pretraining_run_id"] == foreign
    assert 0.0 <= runs[0].data.metrics["eval.knn_top1"] <= 100.0
    assert runs[0].data.params["eval.lin.steps"] == "100" and runs[0].data.params["eval.knn.k"] == "20"


@pytest.mark.parametrize("damage", ["truncated", "empty", "truncated-no-record"])
def test_damaged_checkpoint_is_one_line_exit_2(tmp_path, capsys, damage):
    from siamim.checkpoint import integrity_path

    ckpt = _checkpoint(tmp_path / "ray", None)
    data = ckpt.read_bytes()
    ckpt.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    if damage == "truncated-no-record":  # written before integrity records existed: torch's own error, one line
        integrity_path(ckpt).unlink()
    rc = _job().main(["--checkpoint", str(ckpt), "--protocols", "knn", "--out", str(tmp_path / "out"), *QUICK])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(ckpt) in err
    assert "truncated" in err or "empty" in err, err


def test_bad_arguments_fail_before_torch_is_imported(tmp_path):
    """A typo costs no torch/timm import (about 9 s on a loaded 2-core machine): checked in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('ev', {str(REPO / 'jobs' / 'evaluate.py')!r}); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "rcs = [m.main(a) for a in (['--baseline', 'pixel'], ['--baseline', 'pixels', '--protocols', 'knn,lni'], "
        f"['--checkpoint', {str(tmp_path / 'missing.pt')!r}], ['--baseline', 'pixels', 'eval.knn.kk=3'], ['--baseline', 'pixels', 'eval.lin.steps=0'])]; "
        "print(rcs, 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.stdout.strip() == "[2, 2, 2, 2, 2] False", proc.stdout + proc.stderr
    assert "did you mean 'pixels'" in proc.stderr and "did you mean 'lin'" in proc.stderr
    assert "did you mean 'eval.knn.k'" in proc.stderr and "eval.lin.steps=0 is invalid" in proc.stderr


def test_a_run_id_with_the_tracking_server_down_fails_in_seconds_naming_it():
    """MLflow would retry for minutes and then say the run is unknown; the job checks the server first."""
    import subprocess
    import sys
    import time

    from tests.helpers import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a server that is down
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate.py"), "--checkpoint", "0" * 32, "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.time() - start
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unreachable" in proc.stderr and uri in proc.stderr and "Traceback" not in proc.stderr
    assert took < 60, took  # before: about 4 minutes of silent retries


def test_an_unwritable_output_location_fails_before_any_compute(tmp_path):
    """Found after all the compute before; now exit 2 naming --out, before torch is imported."""
    import subprocess
    import sys

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for out in (blocker / "sub", "/proc/no-such-dir/eval"):
        code = (
            f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('ev', "
            f"{str(REPO / 'jobs' / 'evaluate.py')!r}); m = importlib.util.module_from_spec(spec); "
            f"spec.loader.exec_module(m); rc = m.main(['--baseline', 'pixels', '--out', {str(out)!r}]); "
            "print(rc, 'torch' in sys.modules)"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.stdout.strip() == "2 False", proc.stdout + proc.stderr
        assert f"--out {out}: cannot write there" in proc.stderr


def test_job_baseline_names_match_the_package():
    from siamim.eval.baselines import BASELINES

    assert _job().BASELINE_NAMES == BASELINES
