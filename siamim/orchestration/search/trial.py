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
from typing import Any

from mlflow.tracking import MlflowClient
from ray import tune

from siamim.config import Config, flatten
from siamim.orchestration import tracking
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


def open_search_child(spec: dict, cfg: Config, index: int, tags: dict) -> tuple[str, Any]:
    """Create or reopen the trial's MLflow child run; returns ``(run_id, previous run or None)``."""

    uri, parent = spec["tracking_uri"], spec["parent_run_id"]
    client = MlflowClient(uri)
    exp_id = client.get_run(parent).info.experiment_id
    previous = tracking.find_child(client, exp_id, parent, SEARCH_TRIAL_TAG, trial_key(spec, index))
    values = spec["samples"][index]
    params = {**flatten(cfg), **{f"search.sample.{k}": v for k, v in values.items()}, "search.index": index}
    run_id = tracking.open_run(
        uri,
        spec["experiment"],
        trial_name(index),
        params,
        {
            "mlflow.parentRunId": parent,
            SEARCH_TRIAL_TAG: trial_key(spec, index),
            SEARCH_TAG: spec["name"],
            "siamim.run_name": trial_name(index),
            "mlflow.source.name": "jobs/search.py",
            "mlflow.source.git.commit": spec.get("git_commit"),
            **tags,
        },
        run_id=previous.info.run_id if previous else None,
    )
    return run_id, previous


def run_search_trial(config: dict, spec: dict) -> None:
    """Tune function trainable: ``config = {"sample": {"index": i, <key>: value, ...}}``; ``spec``: the search."""

    index = int(config["sample"]["index"])
    started = time.time()
    cfg = search_config(spec, spec["samples"][index], index)
    ctx = tune.get_context()
    uri = spec["tracking_uri"]
    run_id, previous = open_search_child(
        spec, cfg, index, {"tune.trial_id": ctx.get_trial_id(), "tune.trial_name": ctx.get_trial_name()}
    )
    if previous is not None and previous.info.status == "FINISHED" and spec["metric"] in previous.data.metrics:
        print(f"[search] trial {trial_name(index)} already finished in MLflow run {run_id}; reporting it", flush=True)
        tracking.finish_run(uri, run_id, "FINISHED")
        tune.report({**previous.data.metrics, "step": spec["budget"], "mlflow_run_id": run_id, "reused": 1})
        return
    starts = int(previous.data.tags.get(STARTS_TAG, "0") if previous else "0") + 1
    tracking.set_tags(uri, run_id, {STARTS_TAG: starts})
    shown = ", ".join(f"{k}={v}" for k, v in spec["samples"][index].items())
    print(f"[search] trial {trial_name(index)} start #{starts} ({shown}), MLflow run {run_id}", flush=True)
    storage = st.resolve_storage(cfg.run.storage)
    with closes_run(uri, run_id, error_tag="search.error"):
        # The monitor's last value is the trial's result: no separate final kNN.
        fit_trial(cfg, storage, uri, run_id, started, final_knn=False, search=spec["name"])
