"""The driver of ``jobs/search.py``: a hyperparameter search as one experiment of
:mod:`siamim.orchestration.driver.tune` (the drawn samples, each trial
:func:`~siamim.orchestration.search.trial.run_search_trial`, stopped early by ASHA), then its own results: each
trial's status on its child run, the table, the plot and the best config as a preset.

Layout under ``<storage>/<search name>/``::

    experiment_state-*.json, tuner.pkl, ...   Ray Tune's experiment state (what --resume restores)
    t<index>_<id>/                            one Tune trial: result.json, progress.csv, events.out.tfevents.*
    pretrain/t<index>/checkpoint_*/           the trial's Ray Train run
    siamim_search.json, asha_rungs.json       search record (flags, samples, MLflow parent run); ASHA's rungs
    search_table.md/.csv, search_plot.png, <name>.yaml   the results (also in the parent run, search/)

The best config also goes to ``configs/found/<name>.yaml`` of this checkout (``--config found/<name>``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mlflow.tracking import MlflowClient
from ray import tune

from siamim.config import to_dict
from siamim.orchestration import tracking
from siamim.orchestration.driver import tune as tx
from siamim.orchestration.search import report as rep
from siamim.orchestration.search.scheduler import ResumableASHA
from siamim.orchestration.search.space import SearchInputError
from siamim.orchestration.search.spec import (
    FOUND_DIR,
    SEARCH_TRIAL_TAG,
    STOPPED_TAG,
    SearchSpec,
    budget_steps,
    search_config,
    trial_key,
    trial_name,
)
from siamim.orchestration.search.trial import run_search_trial


class SearchFailed(SearchInputError):
    """No trial ran its whole budget: no best config (the table of the trials is still written). Exit 1."""

    exit_code = 1


@dataclass(kw_only=True)
class SearchSummary(tx.ExperimentSummary):
    trials: list[dict]
    best: dict | None
    preset: str | None
    table_md: str


class Search(tx.ExperimentJob):
    """The search's own part: the samples, ASHA, and the table, plot and preset of its trials."""

    spec_type, trial = SearchSpec, staticmethod(run_search_trial)

    def prepare(self, spec: SearchSpec, record: dict | None) -> None:
        spec.check()
        spec.budget = budget_steps(spec)
        if record is None and (FOUND_DIR / f"{spec.name}.yaml").exists():
            raise SearchInputError(f"--name {spec.name}: configs/found/{spec.name}.yaml exists; pick another --name")
        # The metric appears only at the monitor's steps: Tune's check that every result carries the
        # scheduler's metric is off (it would fail the trial at its first report, step 1).
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"

    def param_space(self, spec: SearchSpec) -> dict:
        return {"sample": tune.grid_search([{"index": i, **v} for i, v in enumerate(spec.samples)])}

    def tune_options(self, spec: SearchSpec) -> dict:
        # Rungs strictly below the budget (max_t = budget - 1) and no stop at max_t: a trial's last report is
        # never a reason to kill it while it finishes (its MLflow run and checkpoint are written after it).
        asha = ResumableASHA(
            spec.storage,
            spec.name,
            time_attr="step",
            metric=spec.metric,
            mode=spec.mode,
            max_t=spec.budget - 1,
            grace_period=spec.grace_period,
            reduction_factor=spec.reduction_factor,
            stop_last_trials=False,
        )
        return {"scheduler": asha}

    def finish(self, exp: tx.Experiment, results, log) -> SearchSummary:
        spec = exp.spec
        trials = _collect(spec, results, exp.parent)
        keys = list(spec.samples[0])
        best = rep.best_trial(trials, spec.mode)
        table_md = rep.table_markdown(trials, keys, spec.metric, spec.budget, best)
        files = {"search_table.md": table_md, "search_table.csv": rep.table_csv(trials, keys, spec.metric, spec.budget)}
        preset = None
        if best is not None:
            cfg = search_config(spec.model_dump(), best["values"], best["index"])
            header = rep.preset_header({**spec.model_dump(), "parent_run_id": exp.parent}, best, trials, spec.budget)
            files[f"{spec.name}.yaml"] = rep.preset_text(to_dict(cfg), header)
            FOUND_DIR.mkdir(parents=True, exist_ok=True)
            found = FOUND_DIR / f"{spec.name}.yaml"
            found.write_text(files[f"{spec.name}.yaml"])
            preset = str(found)
        draw = lambda folder: rep.plot(trials, spec.metric, spec.budget, folder / "search_plot.png", best)  # noqa: E731
        count = {s: sum(t["status"] == s for t in trials) for s in (rep.FINISHED, rep.STOPPED, rep.FAILED)}
        metrics = {
            "search.trials_finished": count[rep.FINISHED],
            "search.trials_stopped_early": count[rep.STOPPED],
            "search.trials_failed": count[rep.FAILED],
        }
        if best is not None:
            metrics[f"search.best_{spec.metric}"] = best["metric"]
        tags = {"search.best_trial": best["name"] if best else "-", "search.preset": preset and f"found/{spec.name}"}
        done = exp.close(files, draw, metrics, tags, "FINISHED" if best else "FAILED")
        log("\n" + table_md)
        if best is None:
            raise SearchFailed(
                f"no trial of search {spec.name!r} ran its whole budget ({spec.budget} steps): no best config; "
                f"the table is in MLflow run {exp.parent}"
            )
        return SearchSummary(**done, trials=trials, best=best, preset=preset, table_md=table_md)


def run_search(spec: SearchSpec | None = None, **how) -> SearchSummary:
    """Run the search ``spec`` (or ``resume=NAME`` under ``storage=``; also ``tracking_uri``, ``address``, ``log``):
    :func:`~siamim.orchestration.driver.tune.run_experiment`. Raises :class:`SearchFailed` when no trial ran its
    budget."""
    return tx.run_experiment(Search(), spec, **how)


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

    client = MlflowClient(spec.tracking_uri)
    exp_id = client.get_run(parent).info.experiment_id
    trials = []
    for result in grid:
        sample = (result.config or {}).get("sample")
        if not sample:
            continue
        index = int(sample["index"])
        child = tracking.find_child(client, exp_id, parent, SEARCH_TRIAL_TAG, trial_key(spec.model_dump(), index))
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


__all__ = [
    "SearchFailed",
    "SearchInputError",
    "SearchSpec",
    "SearchSummary",
    "run_search",
]
