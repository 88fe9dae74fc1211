"""The driver side of a pretraining job: checks, MLflow run, TorchTrainer fit, summary.

``jobs/pretrain.py`` parses the command line and calls :func:`run_pretraining`;
tests call it in-process. The order matters for failing fast: config ->
preflight (tracking store, storage, data) -> Ray -> MLflow run + run record ->
workers. Resuming (the run, its checkpoint, its plan) is :mod:`siamim.orchestration.runs.resume`; the Ray
connection is :mod:`.cluster`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

from siamim.config import Config, dump_yaml, flatten, to_dict
from siamim.orchestration import REPO_ROOT, job_config, submission_id, tracking
from siamim.orchestration.driver.cluster import ensure_ray
from siamim.orchestration.driver.preflight import ResourceWatch, preflight
from siamim.orchestration.driver.resources import fit_hint, full_size_warning, resource_shortfall
from siamim.orchestration.errors import LaunchError, LaunchInputError
from siamim.orchestration.runs import storage as st
from siamim.orchestration.runs.checkpoints import ResumePoint, checkpoint_location
from siamim.orchestration.runs.claims import releases_claims, take_claim
from siamim.orchestration.runs.resume import (
    Target,
    check_fresh_plan,
    check_new_name,
    plan_resumed_run,
    resume_target,
)
from siamim.orchestration.tracking import stream
from siamim.orchestration.tracking import ui as mlflow_ui
from siamim.orchestration.tracking.report import write_run_report

RUNS_TABLE_METRICS = ("knn_top1", "loss")  # the runs table's columns behind the printed link (mlflow_ui)


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
    registered: str | None = None  # models:/<name>/<version> of the encoder (--register)
    ui: list[str] = field(default_factory=list)  # the MLflow UI's links (mlflow_ui.ui_lines)

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
            *self.ui,
            f"  checkpoint       {self.checkpoint}",
            *(
                [f"  registered       {self.registered} (jobs/evaluate.py --checkpoint {self.registered})"]
                if self.registered
                else []
            ),
            f"  train longer     python jobs/pretrain.py --resume {self.run_name} --storage '{self.storage}'"
            " --more-steps N",
            "=" * 72,
        ]


# --------------------------------------------------------------------------- the job's steps
def _check_flags(resume, more_steps: int | None) -> None:
    if more_steps is not None and resume is False:
        raise LaunchInputError("--more-steps continues a run: use it with --resume NAME")
    if more_steps is not None and more_steps < 1:
        raise LaunchInputError(f"--more-steps {more_steps}: give a positive number of steps")


def _connect_ray(cfg: Config, address: str | None, wait_for_resources: float, launch_time: float, log) -> float:
    """Join or start Ray and check it can fit the workers; returns how many seconds the run may wait for a
    cluster too small for them, at the start or after a node loss (-1: no bound; a local instance)."""
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
    elif warning := full_size_warning(cfg, ray.cluster_resources()):
        log(f"[siamim] warning: {warning}")
    return -1.0 if embedded else wait_for_resources  # a cluster may also shrink mid-run (a node lost)


def _open_mlflow_run(target: Target, storage: st.Storage, tracking_uri: str) -> str:
    """Create (or reopen, on resume) the MLflow run with the config as params and the job's tags."""
    import ray

    cfg, run_name, meta = target.cfg, target.run_name, job_config()
    tags = {
        "siamim.run_name": run_name,
        "siamim.storage": storage.display(run_name),
        "siamim.num_workers": cfg.run.num_workers,
        "mlflow.source.git.commit": tracking.git_commit(REPO_ROOT, meta.get("metadata")),
        "siamim.git_dirty": (meta.get("metadata") or {}).get("git_dirty"),  # jobs/submit.py
        "mlflow.source.name": "jobs/pretrain.py",
        "siamim.source_digest": tracking.source_digest(REPO_ROOT),
        "ray.job_id": ray.get_runtime_context().get_job_id(),
        "ray.submission_id": submission_id(),
        "ray.working_dir": (meta.get("runtime_env") or {}).get("working_dir"),
    }
    try:
        return tracking.open_run(
            tracking_uri,
            cfg.run.experiment,
            run_name,
            flatten(cfg),
            tags,
            run_id=target.record["mlflow_run_id"] if target.record else None,
        )
    except tracking.TrackingError as err:
        raise LaunchError(str(err)) from err
    except Exception as err:
        raise LaunchError(f"MLflow tracking store {tracking_uri} failed: {type(err).__name__}: {err}") from err


def record_run(
    storage: st.Storage,
    run_name: str,
    cfg: Config,
    run_id: str,
    tracking_uri: str,
    created: float | None = None,
    **extra,
) -> None:
    """The run record (``<storage>/<run>/siamim_run.json``: MLflow run, tracking URI, resolved config) and the
    config as the MLflow artifact ``config.yaml``; a pretraining job and a grid trial write the same."""
    now = time.time()
    record = {
        "name": run_name,
        "mlflow_run_id": run_id,
        "tracking_uri": tracking_uri,
        "experiment": cfg.run.experiment,
        "config": to_dict(cfg),
        "created": created or now,
        "updated": now,
        **extra,
    }
    st.write_json(storage, record, run_name, st.RUN_RECORD)
    MlflowClient(tracking_uri).log_text(run_id, dump_yaml(cfg), "config.yaml")


def fit_trial(
    cfg: Config, storage: st.Storage, tracking_uri: str, run_id: str, started: float, final_knn: bool, **record
):
    """A grid's or a search's trial: the run record (plus ``record``), then the ``TorchTrainer`` fit whose stream
    writes the child run live and forwards every report to Tune; Ray's ``Result``, or ``RuntimeError`` if it failed."""
    from siamim.orchestration.driver.trainer import build_trainer

    record_run(storage, cfg.run.name, cfg, run_id, tracking_uri, **record)
    trainer = build_trainer(cfg, storage, cfg.run.name, tracking_uri, run_id, started, final_knn=final_knn, tune=True)
    result = trainer.fit()
    if getattr(result, "error", None) is not None:
        raise RuntimeError(f"pretraining failed: {result.error}")
    return result


def _fit(
    target: Target,
    storage: st.Storage,
    tracking_uri: str,
    run_id: str,
    point: ResumePoint | None,
    launch_time: float,
    watch: ResourceWatch,
    checkpoint_pictures: bool = False,
):
    """Build the TorchTrainer (restoring ``point``'s checkpoint) and fit it; returns Ray's ``Result``."""
    from siamim.orchestration.driver.trainer import build_trainer

    skipped = [c.name for c, _ in point.skipped] if point else []
    trainer = build_trainer(
        target.cfg,
        storage,
        target.run_name,
        tracking_uri,
        run_id,
        launch_time,
        restore_from=point.checkpoint.path if point and point.checkpoint and skipped else None,
        skip_checkpoints=skipped,
        start_step=point.step if point else 0,
        checkpoint_pictures=checkpoint_pictures,
    )
    with watch:
        try:
            result = trainer.fit()
        except SystemExit:  # Ray Train's SIGINT handler may leave fit() through sys.exit (ray-project/ray#54188)
            if trainer.interrupted:
                raise KeyboardInterrupt from None
            raise
    if trainer.interrupted:  # Ctrl-C aborted the run and fit() returned
        raise KeyboardInterrupt
    return result


def _summary(
    target: Target, storage: st.Storage, tracking_uri: str, run_id: str, step: int, where: str, launch_time: float
) -> PretrainSummary:
    """The job's summary of run ``run_id`` trained to ``step``, its latest checkpoint at ``where``."""

    def at_final_step(key: str) -> float | None:  # this launch's value: the stream logs it at the final step
        try:
            tracking.check_tracking(tracking_uri)  # seconds; MLflow's own retries take minutes (mlflow/mlflow#14247)
            history = MlflowClient(tracking_uri).get_metric_history(run_id, key)
            return next((m.value for m in reversed(history) if m.step == step), None)
        except Exception:  # the tracking server is gone: _finish says so
            return None

    return PretrainSummary(
        run_name=target.run_name,
        mlflow_run_id=run_id,
        tracking_uri=tracking_uri,
        experiment=target.cfg.run.experiment,
        step=step,
        checkpoint=where,
        knn_top1=at_final_step("knn_top1"),
        wall_s=time.time() - launch_time,
        time_to_first_step_s=at_final_step("time_to_first_step_s"),
        resumed=target.record is not None,
        storage=storage.uri,
    )


def _finish(target: Target, storage: st.Storage, tracking_uri: str, run_id: str, end: dict, log) -> str | None:
    """Write the run's end (:func:`~siamim.orchestration.driver.trainer.log_run_end`: encoder, pictures, the
    checkpoint tag, ``--register``); returns the registered ``models:/`` reference. With MLflow unreachable the
    end goes to the stream's spool as its last record (for ``--resume``) and :class:`EndKept` is raised.

    ``end``: ``{"checkpoint": its path in storage.fs, "location": for users, "register": a model name or
    None, "pictures": log the final pictures (not already logged per checkpoint), "step"}``.
    """
    import ray.train

    from siamim.orchestration.driver.trainer import log_run_end

    try:
        tracking.check_tracking(tracking_uri)
    except tracking.TrackingError as err:
        stream.spool(storage, target.run_name, run_id, [stream.record(end["step"], {}, end=end)], append=True)
        log(
            f"[siamim] warning: trained, but {err} The run's end (encoder, pictures, FINISHED) is kept in "
            f"{storage.display(target.run_name, stream.PENDING)}; once MLflow is back, write it with: "
            f"python jobs/pretrain.py --resume {target.run_name} --storage '{storage.uri}'"
        )
        raise EndKept from None
    checkpoint = ray.train.Checkpoint(end["checkpoint"], filesystem=storage.fs)
    where, pictures, model = end["location"], end["pictures"], end.get("register")
    return log_run_end(tracking_uri, run_id, checkpoint, target.cfg, where, pictures, model, step=end["step"])


class EndKept(Exception):
    """The run's end is in the spool, not in MLflow: :func:`closes_run` leaves the run open."""


@contextlib.contextmanager
def closes_run(
    tracking_uri: str, run_id: str, error_tag: str = "", hint: str = "", watch: ResourceWatch | None = None, log=print
) -> Iterator[None]:
    """The MLflow run's status however the block ends, for a pretraining job and a grid or search trial alike:
    FINISHED when it ends well; left open on :class:`EndKept` (the end waits in the spool); KILLED on Ctrl-C, or
    SIGTERM (``ray job stop``) as SystemExit; FAILED on any other error, with ``error_tag`` set to it when given.
    The error is re-raised.

    A pretraining job (``hint``: its resume flags) logs the hint when KILLED and raises for the user: the resource
    watch's timeout (its interrupt) as :class:`LaunchInputError`, any other error as :class:`LaunchError` with the
    hint (unless it is one already).
    """
    client = MlflowClient(tracking_uri)
    try:
        yield
        client.set_terminated(run_id, "FINISHED")
    except EndKept:
        return
    except BaseException as err:
        stopped = isinstance(err, (KeyboardInterrupt, SystemExit))
        timed_out = stopped and watch is not None and watch.timed_out  # Ray Train aborts the run on its interrupt
        if error_tag:
            client.set_tag(run_id, error_tag, f"{type(err).__name__}: {err}"[:5000])
        client.set_terminated(run_id, "KILLED" if stopped and not timed_out else "FAILED")
        if not hint or isinstance(err, LaunchError):
            raise
        if timed_out:
            then = f"; once it fits, continue from the last checkpoint with {hint}" if watch.lost_mid_run else ""
            raise LaunchInputError(watch.timed_out + then) from None
        if stopped:
            how = "interrupted" if isinstance(err, KeyboardInterrupt) else "terminated"
            log(f"[siamim] {how}; MLflow run {run_id} marked KILLED; continue from the last checkpoint with {hint}")
            raise
        raise LaunchError(
            f"training failed ({type(err).__name__}): {err}\nresume from the last checkpoint with {hint}"
        ) from err


def _report(tracking_uri: str, run_id: str, log) -> None:
    try:  # a report that fails leaves the finished run as it is
        write_run_report(tracking_uri, run_id)
    except Exception as err:
        log(f"[siamim] warning: report.html not written: {type(err).__name__}: {err}")


# --------------------------------------------------------------------------- the job
@releases_claims  # the run-name claim taken below is given back however this returns
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
    register: str | None = None,
    checkpoint_pictures: bool = False,
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
        register: register the run's exported encoder (``encoder/``) as a new version of this
            MLflow registered model (:mod:`siamim.orchestration.tracking.registry`); the summary names ``models:/<name>/<version>``.
        checkpoint_pictures: log the feature pictures at every checkpoint too (else at the end only).
    Raises:
        UserError (ConfigError, PreflightError, StorageError, TrackingError, LaunchInputError: exit 2;
        LaunchError: exit 1) with a message for the user. The MLflow run is
        never left RUNNING: FAILED on errors, KILLED on KeyboardInterrupt / SystemExit (SIGTERM).
    """
    launch_time = launch_time or time.time()
    storage = st.resolve_storage(cfg.run.storage)
    _check_flags(resume, more_steps)
    target = resume_target(cfg, storage, resume, resume_overrides, tracking_uri)
    tracking_uri = tracking.resolve_tracking_uri(target.tracking_uri)
    if target.record is not None and tracking_uri != target.record["tracking_uri"]:
        log(
            f"[siamim] note: run {target.run_name} was tracked at {target.record['tracking_uri']}; "
            f"now using {tracking_uri}"
        )

    preflight(target.cfg, storage, tracking_uri)
    take_claim(storage, target.run_name, log)  # one live launch per run name (claims.py); exit 2 otherwise
    point = None
    if target.record is None:
        check_new_name(storage, target.run_name)
        check_fresh_plan(target.cfg)
    else:
        ended: list[PretrainSummary] = []  # the end of a run that trained while MLflow was unreachable

        def write_end(run_id: str, end: dict) -> bool:
            summary = _summary(target, storage, tracking_uri, run_id, int(end["step"]), end["location"], launch_time)
            with closes_run(tracking_uri, run_id):
                summary.registered = _finish(target, storage, tracking_uri, run_id, end, log)
                ended.append(summary)
            if ended:
                _report(tracking_uri, run_id, log)
            return bool(ended)

        stream.flush_pending(storage, target.run_name, tracking_uri, log, on_end=write_end)  # the last launch's
        try:
            point = plan_resumed_run(target, storage, more_steps, log)
        except LaunchInputError:
            if not ended:
                raise
            run_id = ended[0].mlflow_run_id
            log(f"[siamim] run {target.run_name}: nothing left to train; its end is now in MLflow run {run_id}")
            return ended[0]

    wait = _connect_ray(target.cfg, address, wait_for_resources, launch_time, log)
    run_id = _open_mlflow_run(target, storage, tracking_uri)
    resume_hint = f"--resume {target.run_name} --storage '{storage.uri}'"
    watch = ResourceWatch(target.cfg, wait, log)
    finished = False
    with closes_run(tracking_uri, run_id, hint=resume_hint, watch=watch, log=log):  # marks the run
        created = target.record["created"] if target.record else None
        record_run(storage, target.run_name, target.cfg, run_id, tracking_uri, created)
        log(
            f"[siamim] {'resuming' if target.record else 'starting'} run {target.run_name!r}: "
            f"{target.cfg.run.num_workers} workers ({'GPU' if target.cfg.run.use_gpu else 'CPU'}), "
            f"MLflow run {run_id} at {tracking_uri}, checkpoints under {storage.display(target.run_name)}"
        )
        experiment_id = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
        mlflow_ui.share_runs_view(tracking_uri, experiment_id, RUNS_TABLE_METRICS)  # the columns the link shows
        ui = mlflow_ui.ui_lines(tracking_uri, experiment_id, run_id)
        for line in ui:
            log(f"[siamim] {line.strip()}")
        result = _fit(target, storage, tracking_uri, run_id, point, launch_time, watch, checkpoint_pictures)
        if getattr(result, "error", None) is not None:
            raise LaunchError(f"training failed: {result.error}\nresume from the last checkpoint with {resume_hint}")
        metrics, where = stream.scalars(result.metrics or {}), checkpoint_location(storage, result.checkpoint)
        summary = _summary(target, storage, tracking_uri, run_id, int(metrics.get("step", 0)), where, launch_time)
        summary.ui, summary.metrics = ui, metrics  # the last checkpoint's
        end = {
            "checkpoint": result.checkpoint.path,
            "location": summary.checkpoint,
            "register": register,
            "pictures": not checkpoint_pictures,
            "step": summary.step,
        }
        summary.registered = _finish(target, storage, tracking_uri, run_id, end, log)
        finished = True
    if finished:
        _report(tracking_uri, run_id, log)
    summary.wall_s = time.time() - launch_time
    return summary
