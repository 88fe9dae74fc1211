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
from siamim.orchestration.preflight import (
    PreflightError,
    ResourceWatch,
    check_cluster,
    fit_hint,
    preflight,
    resource_shortfall,
)

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
            f"  train longer     python jobs/pretrain.py --resume {self.run_name} --storage '{self.storage}'"
            " --more-steps N",
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
        raise LaunchInputError(
            f"--resume {name}: no run of that name under storage {storage.display()}"
            + (f" (runs there: {', '.join(known[-10:])})" if known else "")
        )
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


def _python_sigterm() -> None:
    """Give SIGTERM back to Python's handler (``sys.exit`` as ``ray.init`` set it, or the job's own).

    Ray's core worker installs a C++ failure-signal handler over it, which dumps a
    stack and sometimes aborts the driver (exit -6) before Python can unwind and mark
    the MLflow run KILLED.
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler):
            signal.signal(signal.SIGTERM, handler)


def ensure_ray(address: str | None = None) -> bool:
    """Connect to ``address`` / ``$RAY_ADDRESS`` / the job's cluster, or start a local Ray instance.

    Returns True when this call started an embedded (local, autoscaler-less) instance.
    """
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # a submitted job: the supervisor set everything
        ray.init(address=address)
        _python_sigterm()
        return False
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # A new local instance, never whatever /tmp/ray/ray_current_cluster names (a stale file from a
        # dead `ray start` would hang the job); join a running head with --address auto / RAY_ADDRESS.
        address = "local"
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env_vars = {"PYTHONPATH": pythonpath}
    kwargs = {}
    if address == "local":
        # One node that is never drained: Ray Train's node-preemption watcher has nothing to watch, and its
        # creation logs an ERROR line ("PreemptionWatcher ... constructor arguments in the object store").
        env_vars["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
        # Ray Train's detached PlacementGroupCleaner polls the state API with no address: with another Ray
        # instance on the host it fails ("Found multiple active Ray instances") and prints tracebacks. Tell
        # every actor of this job which dashboard is ours.
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            kwargs["dashboard_port"] = sock.getsockname()[1]
        env_vars["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{kwargs['dashboard_port']}"
    ray.init(address=address, runtime_env={"env_vars": env_vars}, **kwargs)
    _python_sigterm()
    global _STARTED_LOCAL
    _STARTED_LOCAL = address == "local"
    return _STARTED_LOCAL


_STARTED_LOCAL = False  # ensure_ray started a local instance in this process


def shutdown_embedded_ray(timeout_s: float = 15.0) -> None:
    """Stop the local Ray instance this process started, after Ray Train's helpers have exited.

    Ray Train leaves a detached ``PlacementGroupCleaner`` actor polling the GCS for a
    moment after ``fit()``; stopping the instance under it (interpreter exit) prints
    "Timed out while waiting for GCS" tracebacks. Waiting for it first ends runs cleanly.
    """
    import ray

    if not (_STARTED_LOCAL and ray.is_initialized()):
        return
    try:
        from ray.util.state import list_actors

        deadline = time.time() + timeout_s
        while time.time() < deadline:
            alive = list_actors(
                filters=[("class_name", "=", "PlacementGroupCleaner"), ("state", "=", "ALIVE")],
                raise_on_missing_output=False,
            )
            if not alive:
                break
            time.sleep(0.5)
    except Exception:  # the state API is best effort here; shut down regardless
        pass
    ray.shutdown()


def _checkpoint_location(storage: st.Storage, checkpoint) -> str | None:
    if checkpoint is None:
        return None
    return checkpoint.path if storage.is_local else f"{storage.uri.split('://', 1)[0]}://{checkpoint.path}"


def _log_checkpoint_artifact(tracking_uri: str, run_id: str, checkpoint) -> None:
    with checkpoint.as_directory() as directory:
        tracking.log_artifacts(tracking_uri, run_id, directory, "checkpoint")


# --------------------------------------------------------------------------- plans
def steps_per_epoch(cfg: Config) -> int | None:
    """Optimizer steps per epoch of ``cfg``'s training data (reads the dataset's size); None when the
    dataset's size is not known up front (a streamed source): the plan checks are skipped then."""
    from siamim.data.sources import build_source
    from siamim.train.loop import step_plan

    try:
        n = len(build_source(cfg.data.dataset, cfg.data.root, "train"))
    except Exception:  # not a map-style source here; the loop reports data problems itself
        return None
    if cfg.data.train_subset is not None:
        n = min(n, cfg.data.train_subset)
    try:
        return step_plan(cfg, n)[0]
    except ValueError as err:
        raise ConfigError(str(err)) from err


def plan_total(cfg: Config, spe: int) -> int:
    return max(1, int(round(cfg.train.epochs * spe)))


def plan_resume(
    cfg: Config, run_name: str, step: int, spe: int, more_steps: int | None, resume_cmd: str, log=print
) -> Config:
    """Set ``cfg``'s stop (and, for ``--more-steps`` past the plan, its length) for a resume at ``step``.

    ``--more-steps N`` trains N steps past the checkpoint: within the plan it only
    moves ``train.max_steps``; past it, ``train.epochs`` grows to cover
    ``step + N`` and the loop re-warms the lr to the re-planned cosine
    (:func:`siamim.train.loop.schedule_plan`). Raises :class:`LaunchInputError` when
    there is nothing to train or ``train.max_steps`` lies past the plan.
    """
    total = plan_total(cfg, spe)
    if more_steps is not None:
        target = step + more_steps
        if target > total:
            cfg.train.epochs = target / spe
            total = plan_total(cfg, spe)
            log(
                f"[siamim] --more-steps {more_steps}: the plan grows to {total} steps (train.epochs="
                f"{cfg.train.epochs:.6g}); the lr re-warms from its last value to the re-planned cosine, "
                "EMA momentum follows the re-planned cosine"
            )
        cfg.train.max_steps = None if target >= total else target
    elif cfg.train.max_steps is not None and cfg.train.max_steps > total:
        raise LaunchInputError(
            f"train.max_steps={cfg.train.max_steps} lies past the end of run {run_name}'s plan "
            f"(train.epochs={cfg.train.epochs:g} x {spe} steps per epoch = {total} steps), so training would stop "
            f"at {total}. Train longer with: {resume_cmd} --more-steps {cfg.train.max_steps - step}"
        )
    stop = min(total, cfg.train.max_steps or total)
    if stop <= step:
        raise LaunchInputError(
            f"run {run_name} is already at step {step}"
            + (
                f" (train.max_steps={cfg.train.max_steps})"
                if cfg.train.max_steps
                else f", the end of its {total}-step plan"
            )
            + f": nothing to train. Train longer with: {resume_cmd} --more-steps N"
        )
    return cfg


def check_fresh_plan(cfg: Config) -> None:
    """``train.max_steps`` past the end of a new run's plan is an error naming the key to raise."""
    if cfg.train.max_steps is None:
        return
    spe = steps_per_epoch(cfg)
    if spe is None:
        return
    total = plan_total(cfg, spe)
    if cfg.train.max_steps > total:
        raise ConfigError(
            f"train.max_steps={cfg.train.max_steps} lies past the end of the plan (train.epochs={cfg.train.epochs:g} "
            f"x {spe} steps per epoch = {total} steps); raise train.epochs to {cfg.train.max_steps / spe:.6g} "
            "for that many steps, or lower train.max_steps"
        )


# --------------------------------------------------------------------------- the job
def run_pretraining(
    cfg: Config,
    *,
    tracking_uri: str | None = None,
    resume: str | None | bool = False,
    resume_overrides: list[str] | dict | None = None,
    more_steps: int | None = None,
    address: str | None = None,
    wait_for_resources: float = 300.0,
    launch_time: float | None = None,
    log=print,
) -> PretrainSummary:
    """Run (or resume) one Ray Train pretraining job tracked in MLflow; returns its summary.

    Args:
        cfg: the resolved config (ignored except ``run.storage`` when resuming:
            the stored config plus ``resume_overrides`` is used then).
        tracking_uri: explicit MLflow URI (else ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``).
        resume: False for a new run; a run name, or None/"latest" for the most recent run in storage.
        more_steps: with ``resume``: train this many steps past the checkpoint it continues from,
            growing the plan when needed (see :func:`plan_resume`).
        address: Ray cluster address (None: the job's cluster, ``$RAY_ADDRESS``, or a local instance).
        wait_for_resources: on a cluster, seconds to wait for it to fit the worker group before
            failing (negative: for ever). An embedded local instance that cannot fit fails at once.
    Raises:
        PreflightError / LaunchError / ConfigError with a message for the user. The MLflow run is
        never left RUNNING: FAILED on errors, KILLED on KeyboardInterrupt / SystemExit (SIGTERM).
    """
    launch_time = launch_time or time.time()
    try:
        storage = st.resolve_storage(cfg.run.storage)
    except st.StorageError as err:
        raise PreflightError(str(err)) from err
    if more_steps is not None and resume is False:
        raise LaunchInputError("--more-steps continues a run: use it with --resume NAME")
    if more_steps is not None and more_steps < 1:
        raise LaunchInputError(f"--more-steps {more_steps}: give a positive number of steps")
    record, point = None, None
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
    if record is None:
        if st.exists(storage, run_name, st.RUN_RECORD) or st.exists(storage, run_name, st.RAY_SNAPSHOT):
            raise LaunchInputError(
                f"a run named {run_name!r} already exists under {storage.display()}; "
                f"continue it with --resume {run_name}, or pick another run.name"
            )
        check_fresh_plan(cfg)
    else:
        from siamim.orchestration.checkpoints import resume_point

        point = resume_point(storage, run_name)
        for ckpt, why in point.skipped:
            log(f"[siamim] skipping damaged checkpoint {ckpt.name}: {why}")
        if point.checkpoint is None and point.skipped:
            raise LaunchInputError(
                f"run {run_name} has no intact checkpoint under {storage.display(run_name)} "
                f"({len(point.skipped)} damaged, listed above); start a new run with another name"
            )
        if point.checkpoint is not None:
            log(
                f"[siamim] resuming from {point.checkpoint.name} (step {point.step}"
                + (", verified against its integrity record)" if point.checkpoint.record else ", no integrity record)")
            )
        rec_plan = (point.checkpoint.record or {}).get("plan") if point.checkpoint else None
        spe = int(rec_plan["steps_per_epoch"]) if rec_plan else steps_per_epoch(cfg)
        resume_cmd = f"python jobs/pretrain.py --resume {run_name} --storage '{storage.uri}'"
        if spe is not None:
            cfg = plan_resume(cfg, run_name, point.step, spe, more_steps, resume_cmd, log)
        elif more_steps is not None:
            raise LaunchInputError(
                f"--more-steps: run {run_name}'s checkpoint records no plan and the size of its "
                "training data is unknown; raise train.epochs / train.max_steps instead"
            )

    embedded = ensure_ray(address)
    log(f"[siamim] Ray ready {time.time() - launch_time:.1f} s after launch")
    import ray

    short = resource_shortfall(cfg, ray.cluster_resources())
    if short and embedded:
        raise LaunchInputError(
            f"{short}: this job started a local Ray instance (this machine's resources, no "
            f"autoscaler), so the workers would wait for ever. {fit_hint(cfg, ray.cluster_resources())}"
            ", or run on a cluster (--address, ray job submit)"
        )
    if short:
        bound = f"up to {wait_for_resources:g} s (--wait-for-resources)" if wait_for_resources >= 0 else "for ever"
        log(f"[siamim] warning: {short}; waiting {bound} for the cluster to grow")
    for warning in check_cluster(cfg) if not short else []:
        log(f"[siamim] warning: {warning}")

    tags = {
        "siamim.run_name": run_name,
        "siamim.storage": storage.display(run_name),
        "siamim.num_workers": cfg.run.num_workers,
        "mlflow.source.git.commit": tracking.git_commit(REPO_ROOT, job_config().get("metadata")),
        "siamim.git_dirty": (job_config().get("metadata") or {}).get("git_dirty"),  # jobs/submit.py
        "mlflow.source.name": "jobs/pretrain.py",
        "siamim.source_digest": tracking.source_digest(REPO_ROOT),
        "ray.job_id": ray.get_runtime_context().get_job_id(),
        "ray.submission_id": submission_id(),
        "ray.working_dir": (job_config().get("runtime_env") or {}).get("working_dir"),
    }
    try:
        run_id = tracking.open_run(
            tracking_uri,
            cfg.run.experiment,
            run_name,
            flatten(cfg),
            tags,
            run_id=record["mlflow_run_id"] if record else None,
        )
    except tracking.TrackingError as err:
        raise LaunchError(str(err)) from err
    except Exception as err:
        raise LaunchError(f"MLflow tracking store {tracking_uri} failed: {type(err).__name__}: {err}") from err
    resume_hint = f"--resume {run_name} --storage '{storage.uri}'"
    watch = ResourceWatch(cfg, wait_for_resources if short else -1.0)
    try:  # from here on the MLflow run exists: every exit marks it
        now = time.time()
        st.write_json(
            storage,
            {
                "name": run_name,
                "mlflow_run_id": run_id,
                "tracking_uri": tracking_uri,
                "experiment": cfg.run.experiment,
                "config": to_dict(cfg),
                "created": record["created"] if record else now,
                "updated": now,
            },
            run_name,
            st.RUN_RECORD,
        )
        tracking.log_text(tracking_uri, run_id, dump_yaml(cfg), "config.yaml")
        log(
            f"[siamim] {'resuming' if record else 'starting'} run {run_name!r}: {cfg.run.num_workers} workers"
            f" ({'GPU' if cfg.run.use_gpu else 'CPU'}), MLflow run {run_id} at {tracking_uri}, "
            f"checkpoints under {storage.display(run_name)}"
        )

        from siamim.orchestration.trainer import build_trainer

        skipped = [c.name for c, _ in point.skipped] if point else []
        trainer = build_trainer(
            cfg,
            storage,
            run_name,
            tracking_uri,
            run_id,
            launch_time,
            restore_from=point.checkpoint.path if point and point.checkpoint and skipped else None,
            skip_checkpoints=skipped,
            start_step=point.step if point else 0,
        )
        with watch:
            result = trainer.fit()
    except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C, or SIGTERM (ray job stop) as SystemExit
        if watch.timed_out:  # Ray Train answers the watch's interrupt by aborting the run and exiting
            tracking.finish_run(tracking_uri, run_id, "FAILED")
            raise LaunchInputError(watch.timed_out) from None
        tracking.finish_run(tracking_uri, run_id, "KILLED")
        how = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        log(f"[siamim] {how}; MLflow run {run_id} marked KILLED; continue from the last checkpoint with {resume_hint}")
        raise
    except BaseException as err:
        tracking.finish_run(tracking_uri, run_id, "FAILED")
        raise LaunchError(
            f"training failed ({type(err).__name__}): {err}\nresume from the last checkpoint with {resume_hint}"
        ) from err
    if getattr(result, "error", None) is not None:
        tracking.finish_run(tracking_uri, run_id, "FAILED")
        raise LaunchError(f"training failed: {result.error}\nresume from the last checkpoint with {resume_hint}")

    try:
        checkpoint = _checkpoint_location(storage, result.checkpoint)
        if result.checkpoint is not None:
            _log_checkpoint_artifact(tracking_uri, run_id, result.checkpoint)
        tracking.set_tags(tracking_uri, run_id, {"siamim.checkpoint": checkpoint})
    except BaseException:
        tracking.finish_run(tracking_uri, run_id, "FAILED")
        raise
    tracking.finish_run(tracking_uri, run_id, "FINISHED")
    metrics = dict(result.metrics or {})
    step = int(metrics.get("step", 0))

    def at_final_step(key: str) -> float | None:  # this launch's value: rank 0 logs it at the final step
        return next((v for s, v in reversed(tracking.metric_history(tracking_uri, run_id, key)) if s == step), None)

    return PretrainSummary(
        run_name=run_name,
        mlflow_run_id=run_id,
        tracking_uri=tracking_uri,
        experiment=cfg.run.experiment,
        step=step,
        checkpoint=checkpoint,
        knn_top1=at_final_step("knn_top1"),
        wall_s=time.time() - launch_time,
        time_to_first_step_s=at_final_step("time_to_first_step_s"),
        resumed=record is not None,
        storage=storage.uri,
        metrics=metrics,
    )


__all__ = [
    "ConfigError",
    "LaunchError",
    "LaunchInputError",
    "PreflightError",
    "PretrainSummary",
    "run_pretraining",
    "find_run",
    "apply_overrides",
    "new_run_name",
    "ensure_ray",
    "shutdown_embedded_ray",
    "plan_resume",
    "resource_shortfall",
]
