"""The nearest-class-centroid protocol (one module plus this test), against scikit-learn's NearestCentroid."""

import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestCentroid

from siamim.eval.baselines import baseline_representation
from siamim.eval.protocols.centroid import nearest_centroid_predict
from siamim.eval.report import flat_metrics
from siamim.eval.runner import Suite, evaluate
from siamim.orchestration.ablation import table as tbl
from tests.eval.helpers import cfg, chance, planted


def test_predictions_equal_sklearn_nearest_centroid_on_normalised_features():
    labels = torch.arange(10).repeat(30)
    train, test = planted(labels, 24, 0.7), planted(labels, 24, 0.7, noise_seed=1)
    ours = nearest_centroid_predict(train, labels, test, 10)
    oracle = NearestCentroid().fit(F.normalize(train, dim=1).numpy(), labels.numpy())
    assert ours.tolist() == oracle.predict(F.normalize(test, dim=1).numpy()).tolist()
    acc = 100.0 * (ours == labels).float().mean().item()
    none = nearest_centroid_predict(planted(labels, 24, 0.0), labels, planted(labels, 24, 0.0, noise_seed=1), 10)
    assert acc > 80.0 and abs(100.0 * (none == labels).float().mean().item() - chance()) < 8.0


def test_centroid_protocol_runs_from_the_registry_on_real_pixels():
    top1 = {}
    for pool in ("cls", "mean"):
        c = cfg("eval.train_limit=500", "eval.test_limit=200", f"eval.centroid.pool={pool}", "eval.device=cpu")
        rep = baseline_representation("pixels", c)
        (res,) = evaluate(rep, c, "centroid", Suite(c, log=None), log=lambda m: None)
        top1[pool] = res.metrics["centroid_top1"]
    assert 5 * chance() < top1["cls"] <= 100.0, top1  # measured 69.5 on flattened pixels
    assert top1["mean"] < top1["cls"] - 20.0, top1  # pixels' mean pool is the average patch: 23.0


def test_centroid_reaches_the_table_of_a_one_row_grid():
    """A grid trial's results as the trial reports them (``flat_metrics`` of its evaluation, primary
    representation) for ``--protocols centroid``: the table has the centroid column with that value."""
    c = cfg("eval.train_limit=500", "eval.test_limit=200", "eval.device=cpu")
    results = {"checkpoint": evaluate(baseline_representation("pixels", c), c, "centroid", log=lambda m: None)}
    trial = {"row": "i", "seed": 0, **flat_metrics(results, "checkpoint")}
    top1 = results["checkpoint"][0].metrics["centroid_top1"]
    table = tbl.assemble([trial], ["centroid"])
    assert table[0]["ours"] == {"centroid": (top1, 0.0)}
    md = tbl.to_markdown(table, ["centroid"]).splitlines()
    assert "| centroid (ours) |" in md[0] and md[2].startswith(f"| i | 1 | {top1:.2f} ± 0.00 |"), md
    assert tbl.to_csv(table, ["centroid"]).splitlines()[1].startswith(f"i,1,0,{top1:.4f},0.0000,")
