"""Ray / MLflow / object-storage glue around the SiameseIM core.

Imports flow one way: ``jobs/`` -> ``siamim.orchestration`` -> ``siamim`` core
(which imports no ray, mlflow or boto3).

* :mod:`~siamim.orchestration.launch` - the driver of ``jobs/pretrain.py``
  (preflight, MLflow run, TorchTrainer fit, summary; resume by run name).
* :mod:`~siamim.orchestration.trainer` - the Ray Train V2 TorchTrainer and its per-worker function.
* :mod:`~siamim.orchestration.tracking` - MLflow runs, params, per-step metrics, artifacts.
* :mod:`~siamim.orchestration.storage` - storage paths / URIs (local, s3://...?endpoint_override=).
* :mod:`~siamim.orchestration.preflight` - fail-fast checks before workers start.
"""
