import csv
import io

import pytest

from siamim.eval.baselines import baseline_representation
from siamim.eval.protocols import names
from siamim.eval.report import flat_metrics, table_rows, to_csv, to_markdown
from siamim.eval.runner import Suite, evaluate
from tests.eval.helpers import cfg

QUICK = [
    "eval.train_limit=600",
    "eval.test_limit=200",
    "eval.lin.steps=150",
    "eval.lin.batch_size=128",
    "eval.lin.warmup_steps=15",
    "eval.fewshot.seeds=2",
    "eval.dense.train_mosaics=120",
    "eval.dense.test_mosaics=40",
    "eval.dense.epochs=3",
    "eval.robust.test_limit=60",
    "eval.ft.epochs=1",
    "eval.ft.batch_size=64",
    "eval.ft.warmup_epochs=0.2",
    "eval.device=cpu",
]


def test_every_protocol_runs_on_real_data_with_metrics_in_range_and_a_table():
    c = cfg(*QUICK)
    suite = Suite(c, log=lambda m: None)
    results = {"pixels": evaluate(baseline_representation("pixels", c), c, "all", suite, log=lambda m: None)}
    assert [r.protocol for r in results["pixels"]] == names()
    m = {k: v for r in results["pixels"] for k, v in r.metrics.items()}
    for key in (
        "knn_top1",
        "lin_top1",
        "lin_mean_top1",
        "fewshot_top1",
        "longtail_top1",
        "longtail_rare_top1",
        "dense_miou",
        "dense_pixel_acc",
        "ft_top1",
        "robust_clean_top1",
        "robust_mca",
        "robust_ft_mca",
    ):
        assert 0.0 <= m[key] <= 100.0, key
    assert m["knn_top1"] > 60.0 and m["fewshot_top1"] > 60.0 and m["lin_top1"] > 50.0
    assert m["fewshot_per_class"] == 60.0
    assert all(r.wall_s > 0 for r in results["pixels"])

    rows = table_rows(results)
    md = to_markdown(rows, ["pixels"])
    for col in ("LIN", "1% FT", "FT", "ADE20k mIoU / COCO AP", "LVIS AP box rare", "IN-C 1-mCE"):
        assert f"| {col} |" in md
    assert md.count("wall time") == len(names())
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows, ["pixels"]))))
    assert {r["key"] for r in parsed} >= {"knn_top1", "ft_top1", "robust_mca", "dense_wall_s"}
    assert float(next(r for r in parsed if r["key"] == "knn_top1")["value"]) == pytest.approx(m["knn_top1"], abs=1e-3)
    flat = flat_metrics(results, primary=None)
    assert flat["eval.pixels.knn_top1"] == m["knn_top1"]
