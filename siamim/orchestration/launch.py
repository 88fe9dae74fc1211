"""The driver side of a pretraining job: checks, MLflow run, TorchTrainer fit, summary.

``jobs/pretrain.py`` parses the command line and calls :func:`run_pretraining`;
tests call it in-process. The order matters for failing fast: config ->
preflight (tracking store, storage, data) -> Ray -> MLflow run + run record ->
workers.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from siamim.config import Config, ConfigError, dump_yaml, flatten, parse_override, set_value, to_dict, validate
from siamim.orchestration import storage as st
from siamim.orchestration import tracking
from siamim.orchestration.preflight import PreflightError, check_cluster, preflight

REPO_ROOT = Path(__file__).resolve().parents[2]


class LaunchError(RuntimeError):
    """The job cannot start or did not finish; the message says why."""


class LaunchInputError(LaunchError):
    """The command asks for something that does not exist or clashes (a run name, a resume target)."""


@dataclass
class PretrainSummary:
    run_name: str
    mlflow_run_id: str
    tracking_uri: str
    experiment: str
    step: int
    checkpoint: str | None  # storage location of the latest Ray checkpoint directory
    knn_top1: float | None
    wall_s: float
    time_to_first_step_s: float | None
    resumed: bool
    storage: str = ""
    metrics: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        knn = f"{self.knn_top1:.2f}%" if self.knn_top1 is not None else "n/a"
        first = f"{self.time_to_first_step_s:.1f} s" if self.time_to_first_step_s is not None else "n/a"
        return [
            "=" * 72,
            f"SiameseIM pretraining {'resumed and ' if self.resumed else ''}finished: {self.step} steps",
            f"  kNN top-1        {knn}",
            f"  wall time        {self.wall_s:.1f} s (launch to first step: {first})",
            f"  MLflow run       {self.mlflow_run_id} (experiment {self.experiment!r}, run {self.run_name!r})",
            f"  tracking URI     {self.tracking_uri}",
            f"  checkpoint       {self.checkpoint}",
            f"  resume with      python jobs/pretrain.py --resume {self.run_name} --storage '{self.storage}'"
            " train.max_steps=<more>",
            "=" * 72,
        ]


# --------------------------------------------------------------------------- config / names
def apply_overrides(cfg: Config, overrides: list[str] | dict | None) -> Config:
    """``cfg`` with dotted overrides applied and validated (used on resume, over the stored config)."""
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        set_value(cfg, key, value)
    validate(cfg)
    return cfg


def new_run_name(cfg: Config) -> str:
    return cfg.run.name or f"{cfg.run.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"


def find_run(storage: st.Storage, name: str | None) -> dict:
    """The run record of ``name`` under ``storage``; ``None``/``"latest"``: the most recent run."""
    if name in (None, "", "latest"):
        records = st.list_runs(storage)
        if not records:
            raise LaunchInputError(f"--resume: no runs to resume under storage {storage.display()}")
        return records[-1]
    if not st.exists(storage, name, st.RUN_RECORD):
        known = [r["name"] for r in st.list_runs(storage)]
        raise LaunchInputError(f"--resume {name}: no run of that name under storage {storage.display()}"
                          + (f" (runs there: {', '.join(known[-10:])})" if known else ""))
    return st.read_json(storage, name, st.RUN_RECORD)


def job_config() -> dict:
    """The ``ray job submit`` job config (runtime_env, metadata) of this driver; {} otherwise."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return {}


def submission_id() -> str | None:
    """The ``ray job submit`` id when this driver runs as a submitted job."""
    return job_config().get("metadata", {}).get("job_submission_id")


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address`` / ``$RAY_ADDRESS`` / the job's cluster, or start a local Ray instance."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # a submitted job: the supervisor set everything
        ray.init(address=address)
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # A new local instance, never whatever /tmp/ray/ray_current_cluster names (a stale file from a
        # dead `ray start` would hang the job); join a running head with --address auto / RAY_ADDRESS.
        address = "local"
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})


def _checkpoint_location(storage: st.Storage, checkpoint) -> str | None:
    if checkpoint is None:
        return None
    return checkpoint.path if storage.is_local else f"{storage.uri.split('://', 1)[0]}://{checkpoint.path}"


def _log_checkpoint_artifact(tracking_uri: str, run_id: str, checkpoint) -> None:
    with checkpoint.as_directory() as directory:
        tracking.log_artifacts(tracking_uri, run_id, directory, "checkpoint")


# --------------------------------------------------------------------------- the job
def run_pretraining(
    cfg: Config,
    *,
    tracking_uri: str | None = None,
    resume: str | None | bool = False,
    resume_overrides: list[str] | dict | None = None,
    address: str | None = None,
    launch_time: float | None = None,
    log=print,
) -> PretrainSummary:
    """Run (or resume) one Ray Train pretraining job tracked in MLflow; returns its summary.

    Args:
        cfg: the resolved config (ignored except ``run.storage`` when resuming:
            the stored config plus ``resume_overrides`` is used then).
        tracking_uri: explicit MLflow URI (else ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``).
        resume: False for a new run; a run name, or None/"latest" for the most recent run in storage.
        address: Ray cluster address (None: the job's cluster, ``$RAY_ADDRESS``, or a local instance).
    Raises:
        PreflightError / LaunchError / ConfigError with a message for the user.
    """
    launch_time = launch_time or time.time()
    try:
        storage = st.resolve_storage(cfg.run.storage)
    except st.StorageError as err:
        raise PreflightError(str(err)) from err
    record = None
    if resume is not False:
        try:
            st.check_writable(storage)
        except st.StorageError as err:
            raise PreflightError(str(err)) from err
        record = find_run(storage, resume if isinstance(resume, str) else None)
        from siamim.config import from_dict

        cfg = apply_overrides(from_dict(record["config"]), resume_overrides)
        cfg.run.storage = storage.uri
        run_name = record["name"]
        if tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
            tracking_uri = record["tracking_uri"]
    else:
        run_name = new_run_name(cfg)
    tracking_uri = tracking.resolve_tracking_uri(tracking_uri)
    if record is not None and tracking_uri != record["tracking_uri"]:
        log(f"[siamim] note: run {run_name} was tracked at {record['tracking_uri']}; now using {tracking_uri}")

    preflight(cfg, storage, tracking_uri)
    if record is None and (st.exists(storage, run_name, st.RUN_RECORD) or st.exists(storage, run_name, st.RAY_SNAPSHOT)):
        raise LaunchInputError(f"a run named {run_name!r} already exists under {storage.display()}; "
                          f"continue it with --resume {run_name}, or pick another run.name")

    ensure_ray(address)
    log(f"[siamim] Ray ready {time.time() - launch_time:.1f} s after launch")
    for warning in check_cluster(cfg):
        log(f"[siamim] warning: {warning}")

    import ray

    tags = {
        "siamim.run_name": run_name,
        "siamim.storage": storage.display(run_name),
        "siamim.num_workers": cfg.run.num_workers,
        "mlflow.source.git.commit": tracking.git_commit(REPO_ROOT, job_config().get("metadata")),
        "mlflow.source.name": "jobs/pretrain.py",
        "siamim.source_digest": tracking.source_digest(REPO_ROOT),
        "ray.job_id": ray.get_runtime_context().get_job_id(),
        "ray.submission_id": submission_id(),
        "ray.working_dir": (job_config().get("runtime_env") or {}).get("working_dir"),
    }
    try:
        run_id = tracking.open_run(tracking_uri, cfg.run.experiment, run_name, flatten(cfg), tags,
                                   run_id=record["mlflow_run_id"] if record else None)
    except tracking.TrackingError as err:
        raise LaunchError(str(err)) from err
    except Exception as err:
        raise LaunchError(f"MLflow tracking store {tracking_uri} failed: {type(err).__name__}: {err}") from err
    now = time.time()
    st.write_json(storage, {
        "name": run_name, "mlflow_run_id": run_id, "tracking_uri": tracking_uri, "experiment": cfg.run.experiment,
        "config": to_dict(cfg), "created": record["created"] if record else now, "updated": now,
    }, run_name, st.RUN_RECORD)
    tracking.log_text(tracking_uri, run_id, dump_yaml(cfg), "config.yaml")
    log(f"[siamim] {'resuming' if record else 'starting'} run {run_name!r}: {cfg.run.num_workers} workers"
        f" ({'GPU' if cfg.run.use_gpu else 'CPU'}), MLflow run {run_id} at {tracking_uri}, "
        f"checkpoints under {storage.display(run_name)}")

    from siamim.orchestration.trainer import build_trainer

    trainer = build_trainer(cfg, storage, run_name, tracking_uri, run_id, launch_time)
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        tracking.finish_run(tracking_uri, run_id, "KILLED")
        log(f"[siamim] interrupted; continue from the last checkpoint with --resume {run_name} "
            f"--storage {storage.uri}")
        raise
    except Exception as err:
        tracking.finish_run(tracking_uri, run_id, "FAILED")
        raise LaunchError(f"training failed ({type(err).__name__}): {err}\nresume from the last checkpoint with "
                          f"--resume {run_name}") from err
    if getattr(result, "error", None) is not None:
        tracking.finish_run(tracking_uri, run_id, "FAILED")
        raise LaunchError(f"training failed: {result.error}")

    checkpoint = _checkpoint_location(storage, result.checkpoint)
    if result.checkpoint is not None:
        _log_checkpoint_artifact(tracking_uri, run_id, result.checkpoint)
    tracking.set_tags(tracking_uri, run_id, {"siamim.checkpoint": checkpoint})
    tracking.finish_run(tracking_uri, run_id, "FINISHED")
    metrics = dict(result.metrics or {})
    return PretrainSummary(
        run_name=run_name, mlflow_run_id=run_id, tracking_uri=tracking_uri, experiment=cfg.run.experiment,
        step=int(metrics.get("step", 0)), checkpoint=checkpoint,
        knn_top1=tracking.latest_metric(tracking_uri, run_id, "knn_top1"),
        wall_s=time.time() - launch_time,
        time_to_first_step_s=tracking.latest_metric(tracking_uri, run_id, "time_to_first_step_s"),
        resumed=record is not None, storage=storage.uri, metrics=metrics,
    )


__all__ = ["ConfigError", "LaunchError", "LaunchInputError", "PreflightError", "PretrainSummary", "run_pretraining", "find_run",
           "apply_overrides", "new_run_name", "ensure_ray"]
