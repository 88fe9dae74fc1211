"""The driver of ``jobs/search.py``: a hyperparameter search as a Ray Tune experiment with ASHA, tracked in MLflow.

Order (fail fast): flags -> space -> every sampled config -> tracking store, storage, data, budget ->
cluster resources -> MLflow parent run + search record -> ``Tuner.fit`` with the ASHA scheduler (or
``Tuner.restore(...).fit`` with ``--resume``) -> each trial's status on its child run -> table, plot, the
best config as a preset.

The resources, packing and the embedded-or-cluster Ray are the grid's (:mod:`.ablation`); a trial is
:func:`siamim.orchestration.search_trial.run_search_trial`. Layout under ``<storage>/<search name>/``::

    experiment_state-*.json, tuner.pkl, ...   Ray Tune's experiment state (what --resume restores)
    t<index>_<id>/                            one Tune trial: result.json, progress.csv, events.out.tfevents.*
    pretrain/t<index>/checkpoint_*/           the trial's Ray Train run
    siamim_search.json                        search record: flags, samples, MLflow parent run, tracking URI
    search_table.md/.csv, search_plot.png, <name>.yaml   the results (also in the parent run, search/)

The best config also goes to ``configs/found/<name>.yaml`` of this checkout (``--config found/<name>``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from siamim.config import CONFIG_DIR, ConfigError, check_run_name, load_config
from siamim.orchestration import mlflow_ui, tracking
from siamim.orchestration import search_report as rep
from siamim.orchestration import storage as st
from siamim.orchestration import tune_experiment as tx
from siamim.orchestration.ablation import TrialResources, packing
from siamim.orchestration.ablation_trial import join_uri
from siamim.orchestration.search_space import SearchInputError, check_samples, parse_space, sample
from siamim.orchestration.search_trial import SEARCH_TRIAL_TAG, STOPPED_TAG, search_config, trial_key, trial_name

SEARCH_RECORD = "siamim_search.json"
FOUND_DIR = CONFIG_DIR / "found"
REPO_ROOT = Path(__file__).resolve().parents[2]
TRIAL_ACTOR_RESOURCES = {"cpu": 0, "memory": 64 * 2**20}  # the trial actor only drives (as the grid's)
MONITOR_METRIC = "knn_monitor"


class SearchFailed(SearchInputError):
    """No trial ran its whole budget: no best config (the table of the trials is still written). Exit 1."""

    exit_code = 1


@dataclass
class SearchSpec(TrialResources):
    """Everything the search needs (JSON-serialisable; stored in the search record for ``--resume``)."""

    name: str
    space_text: str  # the space file's YAML (a resumed search needs no file)
    config: str = "tiny"
    overrides: list[str] = field(default_factory=list)
    num_samples: int = 8
    seed: int = 0
    metric: str = MONITOR_METRIC
    mode: str = "max"
    grace_period: int = 100  # steps (Tune's time_attr is the trainer's global step)
    reduction_factor: float = 2.0
    steps: int | None = None
    epochs: float | None = None
    max_retries: int = 0
    storage: str = "runs/search"
    tracking_uri: str | None = None
    experiment: str = "siamim-search"
    samples: list[dict] = field(default_factory=list)  # filled by validate_search
    derived: dict = field(default_factory=dict)  # keys the search sets (the monitor's cadence)
    budget: int | None = None  # steps per trial, known once the data is (budget_steps)

    @property
    def trials(self) -> list[dict]:
        return self.samples


@dataclass
class SearchSummary:
    name: str
    parent_run_id: str
    tracking_uri: str
    tune_path: str
    trials: list[dict]
    best: dict | None
    preset: str | None
    table_md: str
    artifacts: dict[str, str]
    wall_s: float
    ui: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- validation
def _spec_dict(spec: SearchSpec) -> dict:
    return {**asdict(spec), "pretrain_storage": None}


def validate_search(spec: SearchSpec) -> None:
    """Flags, the space and every sampled config, before anything starts; fills ``spec.samples`` (unless it holds
    a resumed search's) and ``spec.derived``. Raises :class:`SearchInputError` naming the flag or key."""
    import yaml

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise SearchInputError(msg)

    check_run_name(str(spec.name or ""), "--name")
    need(spec.num_samples >= 1, f"--num-samples {spec.num_samples}: must be >= 1")
    need(spec.mode in ("max", "min"), f"--mode {spec.mode}: must be max or min")
    need(spec.grace_period >= 1, f"--grace-period {spec.grace_period}: must be >= 1 (steps)")
    need(spec.reduction_factor > 1, f"--reduction-factor {spec.reduction_factor:g}: must be > 1")
    need(spec.steps is None or spec.steps >= 2, f"--steps {spec.steps}: must be >= 2")
    need(spec.epochs is None or spec.epochs > 0, f"--epochs {spec.epochs}: must be positive")
    need(spec.workers_per_trial >= 1, f"--workers-per-trial {spec.workers_per_trial}: must be >= 1")
    need(spec.cpus_per_worker > 0, f"--cpus-per-worker {spec.cpus_per_worker}: must be positive")
    need(spec.gpus_per_worker >= 0, f"--gpus-per-worker {spec.gpus_per_worker}: must be >= 0")
    need(spec.max_concurrent is None or spec.max_concurrent >= 1, f"--max-concurrent {spec.max_concurrent}: >= 1")
    need(spec.max_retries >= 0, f"--max-retries {spec.max_retries}: must be >= 0")
    try:
        base = load_config(spec.config, list(spec.overrides))
    except ConfigError as err:
        raise SearchInputError(f"--config {spec.config} with the overrides: {err}") from err
    dims = parse_space(yaml.safe_load(spec.space_text), base)
    if spec.metric == MONITOR_METRIC:  # the metric exists only with the monitor on, at the steps it runs
        for dim in dims:
            need(
                dim.key not in ("eval.monitor_every", "train.log_every"),
                f"--space: {dim.key}: the monitor's cadence is the search's (ASHA reads {MONITOR_METRIC} at its "
                f"steps); set it as an override ({dim.key}=N), not in the space",
            )
        every = base.eval.monitor_every or spec.grace_period  # a value at every rung (grace x factor^k)
        # the loop runs the monitor at its reporting steps only: train.log_every must divide the cadence
        spec.derived = {"eval.monitor_every": every, "train.log_every": math.gcd(every, base.train.log_every)}
    if not spec.samples:  # a resumed search keeps the samples it recorded (what its Tune trials hold)
        spec.samples = sample(dims, spec.num_samples, spec.seed)
    check_samples(spec.samples, lambda values: search_config(_spec_dict(spec), values))


def budget_steps(spec: SearchSpec) -> int:
    """Training steps per trial (ASHA's ``max_t``): ``train.max_steps`` or the epochs' steps over the data.

    Reads the training set's size (imports torch); raises :class:`SearchInputError` when ``--grace-period``
    does not fit below it.
    """
    from siamim.data.sources import build_source
    from siamim.train.loop import step_plan

    cfg = search_config(_spec_dict(spec), spec.samples[0])
    size = len(build_source(cfg.data.dataset, cfg.data.root, "train"))
    _, total, _ = step_plan(cfg, min(size, cfg.data.train_subset or size))
    budget = min(total, cfg.train.max_steps or total)
    if spec.grace_period >= budget:
        raise SearchInputError(
            f"--grace-period {spec.grace_period}: must be below the budget of {budget} steps per trial "
            "(ASHA stops trials at rungs grace x factor^k before the end); lower it or raise --steps"
        )
    return budget


def rungs(spec: SearchSpec, budget: int) -> list[int]:
    """The steps where ASHA compares trials: grace x factor^k below the budget."""
    out, step = [], float(spec.grace_period)
    while step < budget:
        out.append(int(step))
        step *= spec.reduction_factor
    return out


def describe(spec: SearchSpec, have: dict[str, float], where: str, budget: int) -> list[str]:
    """The dry-run text: the sampled trials, the budget and ASHA's rungs, per-trial resources, packing."""
    pack = packing(spec, have)
    need = spec.trial_need()
    keys = list(spec.samples[0]) if spec.samples else []
    lines = [
        f"search {spec.name!r}: {len(spec.samples)} trials (--num-samples {spec.num_samples}, --seed {spec.seed}) "
        f"of --config {spec.config}" + (f" {' '.join(spec.overrides)}" if spec.overrides else ""),
        f"budget {budget} steps per trial; ASHA on {spec.metric} ({spec.mode}) compares trials at steps "
        f"{', '.join(map(str, rungs(spec, budget)))} (--grace-period {spec.grace_period}, --reduction-factor "
        f"{spec.reduction_factor:g})"
        + (f"; set by the search: {', '.join(f'{k}={v}' for k, v in spec.derived.items())}" if spec.derived else ""),
        f"per trial: {spec.workers_per_trial} Ray Train worker(s) x ({spec.cpus_per_worker:g} CPU"
        + (f", {spec.gpus_per_worker:g} GPU" if spec.gpus_per_worker else "")
        + f") = {need['CPU']:g} CPU"
        + (f", {need['GPU']:g} GPU" if need["GPU"] else "")
        + "; trial actor: 0 CPU",
        f"cluster ({where}): {have['CPU']:g} CPU, {have['GPU']:g} GPU -> {pack['by_resources']} trial(s) fit at "
        f"once; running {pack['concurrent']} at a time (--max-concurrent {spec.max_concurrent or 'auto'})",
        f"best config -> {FOUND_DIR.relative_to(REPO_ROOT)}/{spec.name}.yaml (--config found/{spec.name})",
        "",
        "| trial | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    lines += [
        f"| {trial_name(i)} | " + " | ".join(str(v) for v in s.values()) + " |" for i, s in enumerate(spec.samples)
    ]
    return lines


# --------------------------------------------------------------------------- the search
def _trainable(spec_dict: dict):
    from ray import tune

    from siamim.orchestration.search_trial import run_search_trial

    return tune.with_resources(tune.with_parameters(run_search_trial, spec=spec_dict), TRIAL_ACTOR_RESOURCES)


def _trial_name(trial) -> str:
    return trial_name(int(trial.config["sample"]["index"]))


def _trial_dirname(trial) -> str:
    return f"{_trial_name(trial)}_{trial.trial_id}"


def _scheduler(spec: SearchSpec, budget: int):
    from siamim.orchestration.search_scheduler import ResumableASHA

    # Rungs strictly below the budget (max_t = budget - 1) and no stop at max_t: a trial's last report is
    # never a reason to kill it while it finishes (its MLflow run and checkpoint are written after it).
    return ResumableASHA(
        spec.storage,
        spec.name,
        time_attr="step",
        metric=spec.metric,
        mode=spec.mode,
        max_t=budget - 1,
        grace_period=spec.grace_period,
        reduction_factor=spec.reduction_factor,
        stop_last_trials=False,
    )


def _parent_params(spec: SearchSpec) -> dict:
    keys = ("config", "num_samples", "seed", "metric", "mode", "grace_period", "reduction_factor", "steps", "epochs")
    keys += ("workers_per_trial", "cpus_per_worker", "gpus_per_worker", "max_concurrent", "max_retries", "budget")
    return {
        **{f"search.{k}": getattr(spec, k) for k in keys},
        "search.name": spec.name,
        "search.overrides": " ".join(spec.overrides) or "-",
        "search.storage": spec.storage,
        "search.trials": len(spec.samples),
        "search.space": spec.space_text[:6000],
    }


def _load(resume: str, storage: str | None) -> tuple[SearchSpec, dict]:
    root = st.resolve_storage(storage or "runs/search")
    if not st.exists(root, resume, SEARCH_RECORD):
        raise SearchInputError(f"--resume {resume}: no search of that name under {root.display()}")
    record = st.read_json(root, resume, SEARCH_RECORD)
    return SearchSpec(**record["spec"]), record


def run_search(
    spec: SearchSpec | None = None,
    *,
    resume: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    log=print,
) -> SearchSummary:
    """Run the search ``spec`` (or resume the search named ``resume`` under ``storage``); returns the summary.

    Raises :class:`SearchInputError` (or the preflight's :class:`~siamim.errors.UserError`) before anything
    starts, :class:`SearchFailed` when no trial ran its budget, ``KeyboardInterrupt`` when interrupted.
    """
    from siamim.orchestration.preflight import preflight

    t0 = time.time()
    record = None
    if resume is not None:
        spec, record = _load(resume, storage)
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or record["tracking_uri"]
    assert spec is not None
    root = st.resolve_storage(spec.storage)
    spec.storage = root.uri
    validate_search(spec)
    spec.tracking_uri = tracking.resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    preflight(search_config(_spec_dict(spec), spec.samples[0]), root, spec.tracking_uri)
    spec.budget = budget_steps(spec)
    if record is None:
        if st.exists(root, spec.name):
            raise SearchInputError(
                f"--name {spec.name}: {root.display(spec.name)} already exists; continue that search with "
                f"--resume {spec.name}, or pick another --name"
            )
        if (FOUND_DIR / f"{spec.name}.yaml").exists():
            raise SearchInputError(f"--name {spec.name}: configs/found/{spec.name}.yaml exists; pick another --name")
    pack = tx.start_ray(spec, address)
    parent, tags = tx.open_parent(spec, root, "search", _parent_params(spec), SEARCH_RECORD, record)
    experiment_id = tracking.experiment_of(spec.tracking_uri, parent)
    mlflow_ui.share_runs_view(spec.tracking_uri, experiment_id, (spec.metric, "loss"), tuple(spec.samples[0]))
    ui = mlflow_ui.ui_lines(spec.tracking_uri, experiment_id, parent)
    log(
        f"[search] {'resuming' if record else 'starting'} search {spec.name!r}: {len(spec.samples)} trials, "
        f"{pack['concurrent']} at a time, {spec.budget} steps each; MLflow parent run {parent} at "
        f"{spec.tracking_uri}; Tune experiment {root.display(spec.name)}"
    )
    for line in ui:
        log(f"[search] {line.strip()}")
    spec_dict = {
        **asdict(spec),
        "parent_run_id": parent,
        "git_commit": tags["mlflow.source.git.commit"],
        "pretrain_storage": join_uri(spec.storage, spec.name, "pretrain"),
    }
    grid = _fit(spec, spec_dict, root, record is not None, pack, parent)
    trials = _collect(spec, grid, parent)
    summary = _assemble(spec, parent, root, trials, t0, log)
    summary.ui = ui
    if summary.best is None:
        raise SearchFailed(
            f"no trial of search {spec.name!r} ran its whole budget ({spec.budget} steps): no best config; "
            f"the table is in MLflow run {parent}"
        )
    return summary


def _fit(spec: SearchSpec, spec_dict: dict, root: st.Storage, resuming: bool, pack: dict, parent: str):
    """Tune's fit (a new experiment, or the restored one); ``KeyboardInterrupt`` when it was interrupted."""
    from ray import tune

    # The metric appears only at the monitor's steps: Tune's check that every result carries the
    # scheduler's metric is off (it would fail the trial at its first report, step 1).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"

    def new_tuner(trainable):
        return tune.Tuner(
            trainable,
            param_space={"sample": tune.grid_search([{"index": i, **v} for i, v in enumerate(spec.samples)])},
            tune_config=tune.TuneConfig(
                scheduler=_scheduler(spec, spec.budget),
                max_concurrent_trials=pack["concurrent"],
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tx.run_config(spec, root),
        )

    grid = tx.fit(spec, root, _trainable(spec_dict), resuming, new_tuner, parent, "search")
    if grid.num_terminated + grid.num_errors < len(spec.samples):  # Tune returns early on SIGINT, state saved
        tx.interrupted(spec, parent, "search")
        raise KeyboardInterrupt
    return grid


def _history(df, metric: str) -> dict[int, float]:
    """``{step: value}`` of ``metric`` in a trial's Tune results (rows without either are skipped)."""
    if df is None or "step" not in df or metric not in df:
        return {}
    rows = df[["step", metric]].dropna()
    return {int(s): float(v) for s, v in zip(rows["step"], rows[metric], strict=True)}


def _steps_run(df, history: dict[int, float]) -> int:
    """The last step a trial reported to Tune (else the last step MLflow has its metric at)."""
    steps = df["step"].dropna() if df is not None and "step" in df else []
    return int(max(steps)) if len(steps) else int(max(history, default=0))


def _collect(spec: SearchSpec, grid, parent: str) -> list[dict]:
    """Each trial's status, steps, last metric and history; its child run marked (stopped early, failed)."""
    from mlflow.tracking import MlflowClient

    from siamim.orchestration.ablation_trial import find_child

    client = MlflowClient(spec.tracking_uri)
    exp_id = client.get_run(parent).info.experiment_id
    trials = []
    for result in grid:
        sample = (result.config or {}).get("sample")
        if not sample:
            continue
        index = int(sample["index"])
        child = find_child(client, exp_id, parent, trial_key(asdict(spec), index), tag=SEARCH_TRIAL_TAG)
        history = {}  # MLflow's (all of a resumed trial's steps) with what Tune (and ASHA) saw over it
        if child is not None:
            history = {int(m.step): m.value for m in client.get_metric_history(child.info.run_id, spec.metric)}
        history.update(_history(result.metrics_dataframe, spec.metric))
        steps = _steps_run(result.metrics_dataframe, history)
        status = rep.FAILED if result.error else rep.FINISHED if steps >= spec.budget else rep.STOPPED
        points = sorted(history.items())
        trial = {
            "index": index,
            "name": trial_name(index),
            "values": spec.samples[index],
            "status": status,
            "steps": steps,
            "metric": points[-1][1] if points else None,
            "history": points,
            "run_id": child.info.run_id if child else None,
            "error": f"{type(result.error).__name__}: {result.error}"[:500] if result.error else None,
        }
        trials.append(trial)
        if child is not None:
            run_id = child.info.run_id
            tracking.set_tags(spec.tracking_uri, run_id, {STOPPED_TAG: str(status == rep.STOPPED).lower()})
            tracking.set_tags(spec.tracking_uri, run_id, {"search.steps_run": steps, "search.status": status})
            if status != rep.FINISHED:
                tracking.finish_run(spec.tracking_uri, run_id, "KILLED" if status == rep.STOPPED else "FAILED")
    return trials


def _assemble(spec: SearchSpec, parent: str, root: st.Storage, trials: list[dict], t0: float, log) -> SearchSummary:

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    keys = list(spec.samples[0])
    best = rep.best_trial(trials, spec.mode)
    table_md = rep.table_markdown(trials, keys, spec.metric, spec.budget, best)
    files = {"search_table.md": table_md, "search_table.csv": rep.table_csv(trials, keys, spec.metric, spec.budget)}
    preset = None
    if best is not None:
        cfg = search_config(asdict(spec), best["values"], best["index"])
        from siamim.config import to_dict

        header = rep.preset_header({**asdict(spec), "parent_run_id": parent}, best, trials, spec.budget)
        files[f"{spec.name}.yaml"] = rep.preset_text(to_dict(cfg), header)
        FOUND_DIR.mkdir(parents=True, exist_ok=True)
        found = FOUND_DIR / f"{spec.name}.yaml"
        found.write_text(files[f"{spec.name}.yaml"])
        preset = str(found)
    draw = lambda folder: rep.plot(trials, spec.metric, spec.budget, folder / "search_plot.png", best)  # noqa: E731
    artifacts = tx.publish(spec, parent, root, "search", files, draw)
    client = MlflowClient(spec.tracking_uri)
    counts = {s: sum(t["status"] == s for t in trials) for s in (rep.FINISHED, rep.STOPPED, rep.FAILED)}
    metrics = {
        "search.trials_finished": counts[rep.FINISHED],
        "search.trials_stopped_early": counts[rep.STOPPED],
        "search.trials_failed": counts[rep.FAILED],
        "search.wall_s": time.time() - t0,
    }
    if best is not None:
        metrics[f"search.best_{spec.metric}"] = best["metric"]
    ts = int(time.time() * 1000)
    client.log_batch(parent, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])
    client.set_tag(parent, "search.best_trial", best["name"] if best else "-")
    if preset:
        client.set_tag(parent, "search.preset", f"found/{spec.name}")
    tracking.finish_run(spec.tracking_uri, parent, "FINISHED" if best else "FAILED")
    log("\n" + table_md)
    return SearchSummary(
        spec.name,
        parent,
        spec.tracking_uri,
        root.display(spec.name),
        trials,
        best,
        preset,
        table_md,
        artifacts,
        time.time() - t0,
    )


__all__ = [
    "SearchFailed",
    "SearchInputError",
    "SearchSpec",
    "SearchSummary",
    "budget_steps",
    "describe",
    "run_search",
    "validate_search",
]
