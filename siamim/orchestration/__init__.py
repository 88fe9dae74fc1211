"""Ray / MLflow / object-storage glue around the SiameseIM core.

Imports flow one way: ``jobs/`` -> ``siamim.orchestration`` -> ``siamim`` core
(which imports no ray, mlflow or boto3).

* :mod:`~siamim.orchestration.launch` - the driver of ``jobs/pretrain.py``
  (preflight, MLflow run, TorchTrainer fit, summary).
* :mod:`~siamim.orchestration.resume` - ``--resume``: run record, checkpoint to continue, plan.
* :mod:`~siamim.orchestration.cluster` - the driver's Ray connection.
* :mod:`~siamim.orchestration.trainer` - the Ray Train V2 TorchTrainer and its per-worker function.
* :mod:`~siamim.orchestration.checkpoints` - a run's Ray checkpoints: integrity, resume point, metadata.
* :mod:`~siamim.orchestration.faults` - the fault-tolerance tests' injected worker failure.
* :mod:`~siamim.orchestration.tracking` - MLflow runs, params, per-step metrics, artifacts.
* :mod:`~siamim.orchestration.storage` - storage paths / URIs (local, s3://...?endpoint_override=).
* :mod:`~siamim.orchestration.preflight` - fail-fast checks before workers start.
* :mod:`~siamim.orchestration.ablation` - the ablation grid's driver (``jobs/ablate.py``); its trial, rows, table.
* :mod:`~siamim.orchestration.search` - the hyperparameter search's driver (``jobs/search.py``): space, trial,
  ASHA with resumable rungs, report (table, plot, found preset).
* :mod:`~siamim.orchestration.tune_experiment` - what the grid and the search share around a Tune experiment.
"""
