"""MLflow tracking for Ray Train pretraining runs: the store, the run's opening; the rest in its modules.

* :mod:`.stream` - live metrics: the driver-side Ray Train callback that writes the workers' records, and the spool;
* :mod:`.evaluation` - evaluation results as metrics, artifacts and child runs;
* :mod:`.registry` - a run's exported encoder as a registered model version;
* :mod:`.report` - ``report.html``, one readable page per run;
* :mod:`.ui` - links into the MLflow UI.

The driver creates or reopens the run before the workers start (:func:`open_run`: the config as params, the
job's tags); the MLflow run id is stored in the run record and in every checkpoint's Ray metadata, so a resumed
training continues the same run. Everything else calls ``MlflowClient`` directly. See docs/platform.md.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from siamim.errors import UserError
from siamim.orchestration import REPO_ROOT

DEFAULT_DB = "mlflow.db"
PARAM_VALUE_MAX = 6000


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used; the message says which and why."""


# --------------------------------------------------------------------------- URIs
def resolve_tracking_uri(explicit: str | None = None, base: str | os.PathLike | None = None) -> str:
    """``explicit`` > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<base>/mlflow.db`` (MLflow's own default).

    Relative ``sqlite:///`` and ``file:`` / plain paths become absolute, so Ray
    workers with another working directory write to the same store.
    """
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or ""
    base = Path(base or os.getcwd())
    if not uri:
        return f"sqlite:///{(base / DEFAULT_DB).resolve()}"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and not path.startswith("/"):
            return f"sqlite:///{(base / path).resolve()}"
        return uri
    if uri.startswith("file:"):
        path = uri[len("file:") :].removeprefix("//")
        return "file://" + str((base / path).resolve()) if not path.startswith("/") else uri
    if "://" not in uri and not uri.startswith("databricks"):
        return "file://" + str((base / uri).resolve())
    return uri


def local_store_path(uri: str) -> Path | None:
    """The file or directory of a local store (``sqlite:///``, ``file://``); None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    return None


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (:class:`TrackingError`) when the tracking store is unreachable or unwritable.

    HTTP(S) servers must answer ``GET /health`` within ``timeout_s``; local
    stores need a writable directory.
    """
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                resp.read(64)
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                raise TrackingError(
                    f"MLflow tracking server {uri} refused access (HTTP {err.code}); set "
                    "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"
                ) from err
            # Any other HTTP answer: something is listening; the API calls will tell more.
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({reason}). Start it (platform/dev_stack.sh up), "
                "fix MLFLOW_TRACKING_URI / --tracking-uri, or unset it to use the local store ./mlflow.db."
            ) from err
        return
    path = local_store_path(uri)
    if path is None:
        return  # databricks, custom plugins: MLflow's own calls report problems
    directory = path.parent if uri.startswith("sqlite:") else path
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".siamim-write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise TrackingError(f"MLflow tracking store {uri}: directory {directory} is not writable ({err})") from err


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# --------------------------------------------------------------------------- driver side
def git_commit(repo: str | os.PathLike | None = None, job_metadata: dict | None = None) -> str | None:
    """The code's commit: ``$SIAMIM_GIT_COMMIT``, else the Ray job's metadata ``git_commit``, else ``git rev-parse``.

    ``ray job submit`` leaves ``.git`` out of the uploaded working directory; pass
    ``--metadata-json '{"git_commit": "'$(git rev-parse HEAD)'"}'`` to tag submitted runs.
    """
    if os.environ.get("SIAMIM_GIT_COMMIT"):
        return os.environ["SIAMIM_GIT_COMMIT"]
    if job_metadata and job_metadata.get("git_commit"):
        return str(job_metadata["git_commit"])
    repo = Path(repo or REPO_ROOT)
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def source_digest(repo: str | os.PathLike | None = None) -> str:
    """sha256 over the code and presets that define a run (``siamim/**.py``, ``jobs/*.py``, ``configs/*.yaml``).

    Identifies the exact source even without git (submitted jobs) or with uncommitted edits.
    """
    import hashlib

    repo = Path(repo or REPO_ROOT)
    digest = hashlib.sha256()
    files = sorted([*repo.glob("siamim/**/*.py"), *repo.glob("jobs/*.py"), *repo.glob("configs/*.yaml")])
    for path in files:
        digest.update(str(path.relative_to(repo)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _param_value(value: Any) -> str:
    text = "None" if value is None else str(list(value) if isinstance(value, tuple) else value)
    return text[:PARAM_VALUE_MAX]


def _experiment_id(client, name: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    local = local_store_path(tracking_uri)
    artifact_location = None
    if tracking_uri.startswith("sqlite:///") and local is not None:
        # MLflow's default for a sqlite store in the cwd is ./mlruns; keep artifacts beside the db.
        artifact_location = (local.parent / "mlruns").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def open_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    run_id: str | None = None,
) -> str:
    """Create the MLflow run (or reopen ``run_id``), log ``params`` and ``tags``; returns the run id.

    On reopening, params already logged keep their value (MLflow params are
    immutable); a changed value is recorded as tag ``resume.override.<key>``.
    """
    from mlflow.entities import Param, RunTag

    client = _client(tracking_uri)
    if run_id is None:
        exp_id = _experiment_id(client, experiment, tracking_uri)
        run = client.create_run(exp_id, run_name=run_name, tags={"mlflow.source.type": "JOB"})
        run_id = run.info.run_id
        new_params = params
        extra_tags: dict[str, str] = {}
    else:
        try:
            run = client.get_run(run_id)
        except Exception as err:
            raise TrackingError(
                f"MLflow run {run_id} of the resumed training is not in tracking store {tracking_uri} ({err}); "
                "resume with the tracking URI the run was started with"
            ) from err
        client.update_run(run_id, status="RUNNING")
        logged = run.data.params
        new_params = {k: v for k, v in params.items() if k not in logged}
        changed = {
            k: (logged[k], _param_value(v)) for k, v in params.items() if k in logged and logged[k] != _param_value(v)
        }
        extra_tags = {f"resume.override.{k}": new for k, (_, new) in changed.items()}
        count = int(run.data.tags.get("resume.count", "0")) + 1
        extra_tags["resume.count"] = str(count)
        extra_tags["mlflow.note.content"] = config_note(changed, count)
    client.log_batch(
        run_id,
        params=[Param(k, _param_value(v)) for k, v in new_params.items()],
        tags=[RunTag(k, str(v)) for k, v in {**tags, **extra_tags}.items() if v is not None],
    )
    return run_id


def config_note(changed: dict[str, tuple[str, str]], resumes: int) -> str:
    """The run description (MLflow's ``mlflow.note.content``) of a resumed run: the config it runs with now.

    MLflow params are immutable, so the params keep the values the run started
    with; the description, the ``resume.override.<key>`` tags and ``config.yaml``
    show the configuration the run continued (and finished) with.
    """
    lines = [f"**Resumed {resumes}x.** "]
    if not changed:
        lines[0] += "Configuration unchanged: the params are the configuration it runs with."
        return "\n".join(lines)
    lines[0] += (
        "The params show the values the run *started* with (MLflow params cannot change); it continued "
        "with these (also in the `resume.override.*` tags and `config.yaml`):"
    )
    lines.append("")
    lines.append("| key | now | param (at start) |")
    lines.append("|---|---|---|")
    lines += [f"| {k} | {new} | {old} |" for k, (old, new) in sorted(changed.items())]
    return "\n".join(lines)


# MlflowClient does what these do; they stay for the grid's and the search's drivers (driver/tune.py,
# ablation/, search/) and the end-to-end tests.
def set_tags(tracking_uri: str, run_id: str, tags: dict[str, Any]) -> None:
    """Set the tags whose value is not None."""
    client = _client(tracking_uri)
    for k, v in tags.items():
        if v is not None:
            client.set_tag(run_id, k, str(v))


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(tracking_uri).set_terminated(run_id, status=status)


def experiment_of(tracking_uri: str, run_id: str) -> str:
    """The id of the experiment ``run_id`` belongs to."""
    return _client(tracking_uri).get_run(run_id).info.experiment_id


def metric_history(tracking_uri: str, run_id: str, key: str) -> list:
    """``[(step, value), ...]`` in logging order."""
    return [(m.step, m.value) for m in _client(tracking_uri).get_metric_history(run_id, key)]


def find_child(client, experiment_id: str, parent_id: str, tag: str, key: str):
    """The child run of ``parent_id`` whose tag ``tag`` is ``key`` (a grid's or a search's trial), else None."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{tag}` = '{key}' and tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    return runs[0] if runs else None
