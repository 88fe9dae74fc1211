"""One trial of a hyperparameter search: pretrain one sampled config with Ray Train, reporting live to Tune.

:func:`run_search_trial` is the Ray Tune function trainable (the grid's pattern,
:mod:`siamim.orchestration.ablation.trial`): a ``TorchTrainer`` whose
:class:`~siamim.orchestration.tracking.stream.MlflowStream` writes the trial's MLflow child run
live and forwards every report to Tune, where the ASHA scheduler reads the search's metric
(``knn_monitor``: the online kNN monitor, every ``eval.monitor_every`` steps). Per trial:

1. its config (:func:`search_config`): the base preset, the search's overrides, the sampled values,
   then the search's flags (budget, monitor, workers, ``run.name=t<index>``);
2. its MLflow **child run** under the search's parent, found by the tag ``search.trial=<name>/<index>``
   so a retried or resumed trial reopens it (params: the resolved config + ``search.sample.<key>``);
3. pretraining; the Ray Train run ``<storage>/<search>/pretrain/t<index>`` is stable, so a restarted
   trial continues from its last checkpoint. No evaluation protocols: the monitor is the trial's result.

A trial that ASHA stops is killed by Tune mid-training: the driver marks its child run
(``siamim.stopped_early=true``, status KILLED) once the search ends. A child run that already
FINISHED (a resumed search whose Tune state predates that finish) reports its stored metrics.
"""

from __future__ import annotations

import time

from siamim.config import flatten
from siamim.orchestration.driver import tune as tx
from siamim.orchestration.driver.launch import closes_run, fit_trial
from siamim.orchestration.runs import storage as st
from siamim.orchestration.search.spec import (
    SEARCH_TAG,
    SEARCH_TRIAL_TAG,
    STARTS_TAG,
    search_config,
    trial_key,
    trial_name,
)


def run_search_trial(config: dict, spec: dict) -> None:
    """Tune function trainable: ``config = {"sample": {"index": i, <key>: value, ...}}``; ``spec``: the search."""
    index = int(config["sample"]["index"])
    started = time.time()
    cfg = search_config(spec, spec["samples"][index], index)
    uri, name, values = spec["tracking_uri"], trial_name(index), spec["samples"][index]
    params = {**flatten(cfg), **{f"search.sample.{k}": v for k, v in values.items()}, "search.index": index}
    tags = {SEARCH_TAG: spec["name"], "mlflow.source.name": "jobs/search.py"}
    run_id, previous = tx.open_child(spec, SEARCH_TRIAL_TAG, trial_key(spec, index), name, params, tags)
    done = previous.data.metrics if previous is not None and previous.info.status == "FINISHED" else {}
    reused = f"[search] trial {name} already finished in MLflow run {run_id}; reporting it"
    if tx.reuse_finished(uri, run_id, done if spec["metric"] in done else None, reused, step=spec["budget"]):
        return
    starts = tx.count_start(uri, run_id, previous, STARTS_TAG)
    shown = ", ".join(f"{k}={v}" for k, v in values.items())
    print(f"[search] trial {name} start #{starts} ({shown}), MLflow run {run_id}", flush=True)
    storage = st.resolve_storage(cfg.run.storage)
    with closes_run(uri, run_id, error_tag="search.error"):
        # The monitor's last value is the trial's result: no separate final kNN.
        fit_trial(cfg, storage, uri, run_id, started, final_knn=False, search=spec["name"])
