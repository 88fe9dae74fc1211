"""What the grid (:mod:`siamim.orchestration.ablation.driver`) and the search (:mod:`siamim.orchestration.search.driver`) drivers share around one Ray Tune experiment.

* :func:`start_ray` - resources checked before the embedded Ray starts and again on the cluster; the packing;
* :func:`open_parent` - the MLflow parent run (reopened on ``--resume``) and the experiment's record in storage;
* :func:`run_config`, :func:`fit` - ``Tuner.fit`` of a new experiment or of the restored one (``--resume``);
* :func:`publish` - result files into the parent run's artifacts and the experiment's storage folder.

Each takes the spec duck-typed: ``trial_need()``, ``trials``, ``max_concurrent``, ``workers_per_trial``,
``cpus_per_worker``, ``gpus_per_worker``, ``name``, ``storage``, ``tracking_uri``, ``experiment``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from siamim.orchestration import REPO_ROOT, tracking
from siamim.orchestration.driver.resources import check_trial_fits, cluster_resources, local_resources, packing
from siamim.orchestration.runs import storage as st


def start_ray(spec, address: str | None) -> dict:
    """Check that one trial fits (this machine before an embedded Ray starts, then the cluster), connect;
    returns :func:`~siamim.orchestration.driver.resources.packing`'s plan. Raises ``UserError`` naming the flags."""
    from siamim.orchestration.driver.cluster import ensure_ray

    if address is None and not os.environ.get("RAY_ADDRESS") and not os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        check_trial_fits(spec, local_resources())  # embedded Ray: fail before starting it
    ensure_ray(address)
    have = cluster_resources()
    check_trial_fits(spec, have)
    return packing(spec, have)


def open_parent(
    spec, root: st.Storage, kind: str, params: dict, record_file: str, record: dict | None, extra: dict | None = None
) -> tuple[str, dict]:
    """The experiment's MLflow parent run (``record['parent_run_id']`` reopened on a resume) and its record
    ``<storage>/<name>/<record_file>`` (``{"name", "spec", "parent_run_id", "tracking_uri", "created", "updated"}``
    plus ``extra``); ``kind`` (``ablation`` / ``search``) prefixes the tags. Returns ``(run id, tags)``."""
    import ray

    from siamim.orchestration import job_config

    tags = {
        "mlflow.source.git.commit": tracking.git_commit(REPO_ROOT, job_config().get("metadata")),
        "mlflow.source.name": f"jobs/{'ablate' if kind == 'ablation' else kind}.py",
        "siamim.source_digest": tracking.source_digest(REPO_ROOT),
        f"{kind}.tune_path": root.display(spec.name),
        f"{kind}.kind": "parent",
        "ray.job_id": ray.get_runtime_context().get_job_id(),
    }
    parent = tracking.open_run(
        spec.tracking_uri, spec.experiment, spec.name, params, tags, run_id=record["parent_run_id"] if record else None
    )
    now = time.time()
    body = {"name": spec.name, "spec": spec.model_dump(), "parent_run_id": parent, "tracking_uri": spec.tracking_uri}
    body.update({"created": record["created"] if record else now, "updated": now, **(extra or {})})
    st.write_json(root, body, spec.name, record_file)
    return parent, tags


def fit(spec, root: st.Storage, trainable, resuming: bool, new_tuner: Callable, parent: str, job: str, log=print):
    """``Tuner.restore(...).fit()`` when ``resuming`` and Tune's state is there, else ``new_tuner(trainable).fit()``.

    Tune's experiment state is kept at most 5 s old (its "auto" default waits 10 s or more:
    ray-project/ray#13736). On Ctrl-C the parent run is KILLED, the resume command printed, and the
    ``KeyboardInterrupt`` re-raised (``job``: the log prefix, ``ablate`` / ``search``).
    """
    from ray import tune

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    tune_path = root.join(spec.name)
    try:
        if resuming and tune.Tuner.can_restore(tune_path, storage_filesystem=root.filesystem):
            tuner = tune.Tuner.restore(
                tune_path,
                trainable,
                storage_filesystem=root.filesystem,
                resume_unfinished=True,
                resume_errored=False,
                restart_errored=False,
            )
        else:
            tuner = new_tuner(trainable)
        return tuner.fit()
    except KeyboardInterrupt:
        interrupted(spec, parent, job, log)
        raise


def run_config(spec, root: st.Storage):
    """Tune's ``RunConfig`` of the experiment: ``<storage>/<name>``, ``spec.max_retries`` retries of a failed trial."""
    from ray import tune

    return tune.RunConfig(
        name=spec.name,
        failure_config=tune.FailureConfig(max_failures=spec.max_retries),
        verbose=1,
        **root.ray_kwargs(),
    )


def interrupted(spec, parent: str, job: str, log=print, what: str = "") -> None:
    """The parent run KILLED and the command that continues the experiment printed (``[job] interrupted...``)."""
    tracking.finish_run(spec.tracking_uri, parent, "KILLED")
    log(f"[{job}] interrupted{what}; continue with --resume {spec.name} --storage '{spec.storage}'")


def publish(
    spec, parent: str, root: st.Storage, folder: str, files: dict[str, str], draw: Callable[[Path], None] | None = None
) -> dict[str, str]:
    """``files`` (name -> text), plus what ``draw(dir)`` writes there (plots), logged to the parent run under
    ``folder`` and copied to ``<storage>/<name>/``; returns ``{file name: storage location}``."""
    from mlflow.tracking import MlflowClient

    artifacts = {}
    with tempfile.TemporaryDirectory(prefix=f"siamim-{folder}-") as tmp:
        for fname, text in files.items():
            Path(tmp, fname).write_text(text)
        if draw is not None:
            draw(Path(tmp))
        MlflowClient(spec.tracking_uri).log_artifacts(parent, tmp, folder)
        for fname in sorted(os.listdir(tmp)):
            with root.fs.open_output_stream(root.join(spec.name, fname)) as out:
                out.write(Path(tmp, fname).read_bytes())
            artifacts[fname] = root.display(spec.name, fname)
    return artifacts
