"""One trial of a hyperparameter search: pretrain one sampled config with Ray Train, reporting live to Tune.

:func:`run_search_trial` is the Ray Tune function trainable, in the child run of
:func:`~siamim.orchestration.driver.tune.run_child` (tag ``search.trial=<search>/<index>``; params: the resolved
config + ``search.sample.<key>``). Its config is :func:`~siamim.orchestration.search.spec.search_config`; the
trial's Ray Train run ``<storage>/<search>/pretrain/t<index>`` is stable, so a restarted trial continues from its
last checkpoint. Every report reaches Tune, where ASHA reads the search's metric (``knn_monitor``: the online kNN
monitor, every ``eval.monitor_every`` steps); no evaluation protocols. A trial ASHA stops is killed by Tune: the
driver marks its child run once the search ends.
"""

from __future__ import annotations

import time

from siamim.config import flatten
from siamim.orchestration.driver import tune as tx
from siamim.orchestration.driver.launch import fit_trial
from siamim.orchestration.runs import storage as st
from siamim.orchestration.search.spec import search_config, trial_key, trial_name


def run_search_trial(config: dict, spec: dict) -> None:
    """Tune function trainable: ``config = {"sample": {"index": i, <key>: value, ...}}``; ``spec``: the search."""
    index = int(config["sample"]["index"])
    started = time.time()
    values = spec["samples"][index]
    cfg = search_config(spec, values, index)
    params = {**flatten(cfg), **{f"search.sample.{k}": v for k, v in values.items()}, "search.index": index}
    tags = {"search.name": spec["name"], "mlflow.source.name": "jobs/search.py"}

    def finished(previous) -> dict | None:
        done = previous.data.metrics if previous is not None and previous.info.status == "FINISHED" else {}
        return done if spec["metric"] in done else None

    def work(run_id: str) -> None:  # the monitor's last value is the trial's result: no separate final kNN
        fit_trial(
            cfg,
            st.resolve_storage(cfg.run.storage),
            spec["tracking_uri"],
            run_id,
            started,
            final_knn=False,
            search=spec["name"],
        )

    tx.run_child(
        spec,
        "search",
        trial_key(spec, index),
        trial_name(index),
        params,
        tags,
        finished=finished,
        work=work,
        report={"step": spec["budget"]},
        note=", ".join(f"{k}={v}" for k, v in values.items()),
    )
