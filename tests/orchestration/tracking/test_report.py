"""siamim/orchestration/tracking/report.py: report.html from what a real MLflow store holds."""

from __future__ import annotations

import base64
import re

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image

from siamim.orchestration.tracking.report import REPORT_ARTIFACT, markdown_table_to_html, write_run_report

TABLE = "| protocol | paper column | our metric | checkpoint |\n|---|---|---|---|\n| knn | kNN | top-1 % | 71.25 |\n"


def test_report_holds_config_curves_table_and_pictures(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("report", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp, run_name="tiny-run").info.run_id
    client.log_batch(
        run,
        metrics=[Metric("loss", 1.0 / (s + 1), 0, s) for s in range(1, 6)] + [Metric("knn_top1", 70.5, 0, 5)],
        params=[Param("model.depth", "4"), Param("mask.type", "blockwise"), Param("optim.other", "x")],
    )
    client.log_text(run, TABLE, "eval/evaluation.md")
    client.log_image(run, Image.new("RGB", (20, 10), "red"), artifact_file="pictures/pca.png")
    client.log_image(run, Image.new("RGB", (8, 8), "blue"), artifact_file="eval/pictures/pixels/pca.png")
    client.set_tag(run, "siamim.registered_model", "models:/tiny/3")
    client.set_terminated(run, "FINISHED")

    page = write_run_report(uri, run)
    logged = client.download_artifacts(run, REPORT_ARTIFACT, str(tmp_path))
    assert open(logged).read() == page
    assert "SiameseIM run tiny-run (finished)" in page
    assert "<th>model.depth</th><td>4</td>" in page and "optim.other" not in page  # the summary keys only
    assert "<th>knn_top1</th><td>70.5</td>" in page
    assert "<th>siamim.registered_model</th><td>models:/tiny/3</td>" in page
    assert "<td>71.25</td>" in page  # the evaluation table, as HTML
    assert "pictures/pca.png" in page and "eval/pictures/pixels/pca.png" in page
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 3  # the curves and the two pictures, inlined
    assert base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table_becomes_an_html_table():
    got = markdown_table_to_html(TABLE)
    assert got.startswith("<table><tr><th>protocol</th>") and got.count("<tr>") == 2 and "<td>knn</td>" in got
    assert markdown_table_to_html("no table <b>") == "<pre>no table &lt;b&gt;</pre>"
