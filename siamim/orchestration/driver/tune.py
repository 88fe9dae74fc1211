"""The one experiment driver of the grid (``jobs/ablate.py``) and the search (``jobs/search.py``): a Ray Tune
experiment whose trials each pretrain with Ray Train into an MLflow child run of one parent run.

Driver side, :func:`run_experiment`: the record (``--resume``), the checks, :func:`open_experiment`, ``Tuner.fit``
(or ``Tuner.restore(...).fit``); then the job's own :meth:`ExperimentJob.finish` (its results, through
:meth:`Experiment.close`). Trial side, :func:`run_child`:
the child run found or made, a finished one reported again, the start counted, the work, ``tune.report``.

A job is an :class:`ExperimentJob` (its trials, scheduler, results) with an
:class:`~siamim.orchestration.driver.experiment.ExperimentSpec` (its flags, checks, names; Ray-free).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray import tune

from siamim.orchestration import REPO_ROOT, tracking
from siamim.orchestration.driver.experiment import ExperimentSpec
from siamim.orchestration.driver.launch import closes_run
from siamim.orchestration.driver.preflight import preflight
from siamim.orchestration.driver.resources import check_trial_fits, cluster_resources, local_resources, packing
from siamim.orchestration.runs import storage as st
from siamim.orchestration.tracking import ui as mlflow_ui

TRIAL_ACTOR_RESOURCES = {"cpu": 0, "memory": 64 * 2**20}  # the trial actor only drives; see docs/ablation.md
RETIRED_SPEC_KEYS = ("fail_trial",)  # in grids recorded before the tests' hidden flag became a worker hook


@dataclass(kw_only=True)
class ExperimentSummary:
    """What a finished grid or search returns; the job prints :meth:`lines`."""

    name: str
    parent_run_id: str
    tracking_uri: str
    tune_path: str
    artifacts: dict[str, str]
    wall_s: float
    ui: list[str] = field(default_factory=list)

    def lines(self, title: str, table: str, *head: str) -> list[str]:
        """The job's closing summary: ``title``, ``head``, the parent run, UI links, Tune's path, ``table``."""
        return [
            "=" * 72,
            title,
            *head,
            f"  MLflow parent run  {self.parent_run_id} ({self.tracking_uri})",
            *self.ui,
            f"  Tune experiment    {self.tune_path}   (tensorboard --logdir {self.tune_path})",
            f"  table              {self.artifacts.get(table)}",
            "=" * 72,
        ]


@dataclass
class Experiment:
    """An opened experiment (:func:`open_experiment`): what its Tuner, its trials and its close need."""

    spec: ExperimentSpec
    root: st.Storage
    parent: str  # the MLflow parent run
    pack: dict  # resources.packing's plan
    ui: list[str]  # the MLflow UI's links
    trial_spec: dict  # what every trial gets (tune.with_parameters): the spec, parent run, commit, storage
    t0: float  # the job's launch

    def close(self, files: dict[str, str], draw, metrics: dict[str, float], tags: dict, status: str) -> dict:
        """The results into the parent run (under ``spec.kind``) and ``<storage>/<name>/``: ``files`` (name ->
        text) and what ``draw(dir)`` writes (plots); then its ``metrics`` (+ ``<kind>.wall_s``), ``tags`` and
        ``status``. Returns the :class:`ExperimentSummary` fields."""
        spec, client, artifacts = self.spec, MlflowClient(self.spec.tracking_uri), {}
        with tempfile.TemporaryDirectory(prefix=f"siamim-{spec.kind}-") as tmp:
            for fname, text in files.items():
                Path(tmp, fname).write_text(text)
            if draw is not None:
                draw(Path(tmp))
            client.log_artifacts(self.parent, tmp, spec.kind)
            for fname in sorted(os.listdir(tmp)):
                with self.root.fs.open_output_stream(self.root.join(spec.name, fname)) as out:
                    out.write(Path(tmp, fname).read_bytes())
                artifacts[fname] = self.root.display(spec.name, fname)
        wall_s = time.time() - self.t0
        ts, metrics = int(time.time() * 1000), {**metrics, f"{spec.kind}.wall_s": wall_s}
        client.log_batch(self.parent, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])
        tracking.set_tags(spec.tracking_uri, self.parent, tags)
        tracking.finish_run(spec.tracking_uri, self.parent, status)
        return {
            **{"name": spec.name, "parent_run_id": self.parent, "tracking_uri": spec.tracking_uri, "ui": self.ui},
            **{"tune_path": self.root.display(spec.name), "artifacts": artifacts, "wall_s": wall_s},
        }

    def interrupted(self, what: str = "") -> None:
        """The parent run KILLED and the command that continues the experiment printed."""
        spec = self.spec
        tracking.finish_run(spec.tracking_uri, self.parent, "KILLED")
        print(f"[{spec.job}] interrupted{what}; continue with --resume {spec.name} --storage '{spec.storage}'")


class ExperimentJob:
    """One job's own part of an experiment (``spec_type``, the trainable ``trial(config, spec=trial_spec)``,
    Tune's param space, more ``TuneConfig`` arguments, its results); :func:`run_experiment` is the rest."""

    spec_type: type[ExperimentSpec]
    trial: Callable

    def prepare(self, spec, record: dict | None) -> None:
        """Checks before anything starts (``spec.check()``; more in a job that needs them)."""
        spec.check()

    def param_space(self, spec) -> dict:
        raise NotImplementedError

    def tune_options(self, spec) -> dict:
        return {}

    def finish(self, exp: Experiment, results, log) -> ExperimentSummary:
        raise NotImplementedError


# --------------------------------------------------------------------------- driver side
def run_experiment(
    job: ExperimentJob,
    spec: ExperimentSpec | None = None,
    *,
    resume: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    log=print,
):
    """Run ``spec`` (or resume the experiment named ``resume`` under ``storage``) as ``job``; returns
    ``job.finish``'s summary. Raises the spec's ``input_error`` (or the preflight's ``UserError``) before
    anything starts, ``KeyboardInterrupt`` when interrupted (the parent run KILLED, the resume command printed)."""
    t0 = time.time()
    record = None
    if resume is not None:
        spec, record = load_record(job.spec_type, resume, storage)
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or record["tracking_uri"]
    assert spec is not None
    spec.storage = st.resolve_storage(spec.storage).uri
    job.prepare(spec, record)
    spec.tracking_uri = tracking.resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    exp = open_experiment(spec, record, t0, address, log)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # Tune's "auto" waits 10 s or more: ray#13736
    trainable = tune.with_resources(tune.with_parameters(job.trial, spec=exp.trial_spec), TRIAL_ACTOR_RESOURCES)
    tune_path, fs = exp.root.join(spec.name), exp.root.filesystem
    try:
        if record is not None and tune.Tuner.can_restore(tune_path, storage_filesystem=fs):
            tuner = tune.Tuner.restore(
                tune_path,
                trainable,
                storage_filesystem=fs,
                resume_unfinished=True,
                resume_errored=False,
                restart_errored=False,
            )
        else:
            name = type(spec).trial_name  # pickled into Tune's state by reference, not the spec
            tune_config = tune.TuneConfig(
                max_concurrent_trials=exp.pack["concurrent"],
                trial_name_creator=lambda trial: name(trial.config),
                trial_dirname_creator=lambda trial: f"{name(trial.config)}_{trial.trial_id}",
                **job.tune_options(spec),
            )
            failures = tune.FailureConfig(max_failures=spec.max_retries)
            run_config = tune.RunConfig(name=spec.name, failure_config=failures, verbose=1, **exp.root.ray_kwargs())
            tuner = tune.Tuner(
                trainable, param_space=job.param_space(spec), tune_config=tune_config, run_config=run_config
            )
        results = tuner.fit()
    except KeyboardInterrupt:
        exp.interrupted()
        raise
    missing = len(spec.trials) - results.num_terminated - results.num_errors  # Tune returns early on SIGINT
    if missing > 0:
        exp.interrupted(f" with {missing} trial(s) unfinished")
        raise KeyboardInterrupt
    return job.finish(exp, results, log)


def load_record(spec_type, resume: str, storage: str | None):
    """``(spec, record)`` of the experiment ``resume`` under ``storage``; ``spec_type.input_error`` if none."""
    root = st.resolve_storage(storage or spec_type.model_fields["storage"].default)
    if not st.exists(root, resume, spec_type.record_file):
        what = "ablation grid" if spec_type.what == "grid" else spec_type.what
        raise spec_type.input_error(f"--resume {resume}: no {what} of that name under {root.display()}")
    record = st.read_json(root, resume, spec_type.record_file)
    return spec_type(**{k: v for k, v in record["spec"].items() if k not in RETIRED_SPEC_KEYS}), record


def open_experiment(spec, record: dict | None, t0: float, address: str | None, log=print) -> Experiment:
    """Everything before ``Tuner.fit``, failing fast: the preflight of ``spec.first_config()`` (tracking store,
    storage, data), a new experiment's name not taken, one trial fitting (this machine before an embedded Ray
    starts, then the cluster), Ray, the MLflow parent run (reopened on a resume) and the record
    ``<storage>/<name>/<record_file>``, the runs table behind the printed link. ``t0``: the job's launch."""
    import ray

    from siamim.orchestration import job_config
    from siamim.orchestration.driver.cluster import ensure_ray

    root = st.resolve_storage(spec.storage)
    preflight(spec.first_config(), root, spec.tracking_uri)
    if record is None and st.exists(root, spec.name):
        raise spec.input_error(
            f"--name {spec.name}: {root.display(spec.name)} already exists; continue that {spec.what} with "
            f"--resume {spec.name}, or pick another --name"
        )
    if address is None and not os.environ.get("RAY_ADDRESS") and not os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        check_trial_fits(spec, local_resources())  # embedded Ray: fail before starting it
    ensure_ray(address)
    have = cluster_resources()
    check_trial_fits(spec, have)
    pack = packing(spec, have)
    job = f"[{spec.job}]"
    log(
        f"{job} Ray ready {time.time() - t0:.1f} s after launch; {pack['trials']} trials, {pack['concurrent']} at a time"
    )
    tags = {
        "mlflow.source.git.commit": tracking.git_commit(REPO_ROOT, job_config().get("metadata")),
        "mlflow.source.name": f"jobs/{spec.job}.py",
        "siamim.source_digest": tracking.source_digest(REPO_ROOT),
        f"{spec.kind}.tune_path": root.display(spec.name),
        f"{spec.kind}.kind": "parent",
        "ray.job_id": ray.get_runtime_context().get_job_id(),
    }
    previous = record["parent_run_id"] if record else None
    parent = tracking.open_run(spec.tracking_uri, spec.experiment, spec.name, spec.parent_params(), tags, previous)
    body = {"name": spec.name, "spec": spec.model_dump(), "parent_run_id": parent, "tracking_uri": spec.tracking_uri}
    body.update({"created": record["created"] if record else time.time(), "updated": time.time()})
    st.write_json(root, body, spec.name, spec.record_file)
    log(
        f"{job} {'resuming' if record else 'starting'} {spec.what} {spec.name!r}: {spec.detail()}MLflow "
        f"parent run {parent} at {spec.tracking_uri}; Tune experiment {root.display(spec.name)}"
    )
    experiment_id = tracking.experiment_of(spec.tracking_uri, parent)
    mlflow_ui.share_runs_view(spec.tracking_uri, experiment_id, *spec.columns())
    ui = mlflow_ui.ui_lines(spec.tracking_uri, experiment_id, parent)
    for line in ui:
        log(f"{job} {line.strip()}")
    trial_spec = {
        **spec.model_dump(),
        "parent_run_id": parent,
        "git_commit": tags["mlflow.source.git.commit"],
        "pretrain_storage": root.locate(root.join(spec.name, "pretrain")),
    }
    return Experiment(spec, root, parent, pack, ui, trial_spec, t0)


# --------------------------------------------------------------------------- trial side
def run_child(
    spec: dict,
    kind: str,
    key: str,
    run_name: str,
    params: dict,
    tags: dict,
    *,
    finished: Callable[[Any], dict | None],
    work: Callable[[str], dict | None],
    report: dict,
    note: str,
    start_tags: dict | None = None,
) -> None:
    """One trial's MLflow child run around ``work(run_id)``, under the parent run.

    The child is found by the tag ``<kind>.trial=key`` so a retried or resumed trial reopens it (tags: the
    parent, run name, commit, Tune's trial, ``tags``). ``finished(previous run)``: the stored metrics of a
    child that already finished the trial (then reported to Tune, not redone), else None. Otherwise the start is
    counted (``<kind>.starts``, with ``start_tags``), ``work`` runs with the run closed as a pretraining run's
    (``<kind>.error`` on failure), and its metrics (None: nothing) are reported with ``report``."""
    uri, parent = spec["tracking_uri"], spec["parent_run_id"]
    job, label = ("ablate", key) if kind == "ablation" else (kind, run_name)
    client = MlflowClient(uri)
    previous = tracking.find_child(client, client.get_run(parent).info.experiment_id, parent, f"{kind}.trial", key)
    ctx = tune.get_context()
    tags = {
        "mlflow.parentRunId": parent,
        f"{kind}.trial": key,
        "siamim.run_name": run_name,
        "mlflow.source.git.commit": spec.get("git_commit"),
        "tune.trial_id": ctx.get_trial_id(),
        "tune.trial_name": ctx.get_trial_name(),
        **tags,
    }
    run_id = tracking.open_run(
        uri, spec["experiment"], run_name, params, tags, run_id=previous and previous.info.run_id
    )
    done = finished(previous)
    if done is not None:
        print(
            f"[{job}] trial {label} already finished in MLflow run {run_id}; reporting its stored metrics", flush=True
        )
        tracking.finish_run(uri, run_id, "FINISHED")
        tune.report({**done, **report, "mlflow_run_id": run_id, "reused": 1})
        return
    starts = int(previous.data.tags.get(f"{kind}.starts", "0") if previous else "0") + 1
    tracking.set_tags(uri, run_id, {f"{kind}.starts": starts, **(start_tags or {})})
    print(f"[{job}] trial {label} start #{starts} ({note}), MLflow run {run_id}", flush=True)
    error_tag = f"{kind}.error"
    with closes_run(uri, run_id, error_tag=error_tag):
        metrics = work(run_id)
        if previous is not None and error_tag in previous.data.tags:  # an earlier attempt's error is history
            tracking.set_tags(uri, run_id, {error_tag: "-", f"{kind}.last_error": previous.data.tags[error_tag]})
    if metrics is not None:
        tune.report({**metrics, **report, "mlflow_run_id": run_id, "reused": 0})
