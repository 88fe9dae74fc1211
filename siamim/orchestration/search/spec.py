"""The search's spec and its checks before anything starts (``jobs/search.py --dry-run`` stops after them).

:class:`SearchSpec` holds the flags (the shared ones are :class:`~siamim.orchestration.driver.experiment.ExperimentSpec`'s),
the space's text and the drawn samples; :func:`validate_search` checks the space and every drawn config,
:func:`budget_steps` the budget against the data and ``--grace-period``; :func:`describe` is the dry run's text.
Imports neither Ray nor MLflow (torch only in :func:`budget_steps`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field

from siamim.config import CONFIG_DIR, Config, ConfigError, load_config, parse_override
from siamim.errors import UserError
from siamim.orchestration import REPO_ROOT
from siamim.orchestration.driver.experiment import ExperimentSpec
from siamim.orchestration.driver.resources import flag_overrides
from siamim.orchestration.search.space import SearchInputError, check_samples, parse_space, sample

SEARCH_TRIAL_TAG = "search.trial"
STOPPED_TAG = "siamim.stopped_early"


def trial_name(index: int) -> str:
    """``t003``: a trial's Tune name, Ray Train run and MLflow child run name."""
    return f"t{index:03d}"


def search_config(spec: dict, values: dict[str, Any], index: int = 0) -> Config:
    """The config of the trial with sampled ``values``: ``spec['config']`` preset <- ``spec['overrides']`` <-
    ``values`` <- ``spec['derived']`` (monitor cadence) <- the flags (budget, resources, names).

    Raises :class:`~siamim.config.ConfigError` naming the key.
    """
    merged: dict[str, Any] = dict(parse_override(o) for o in spec["overrides"])
    merged.update(values)
    merged.update(spec.get("derived") or {})
    merged.update(parse_override(o) for o in flag_overrides(spec, trial_name(index)))
    cfg = load_config(spec["config"], merged)
    if spec.get("pretrain_storage"):
        cfg.run.storage = spec["pretrain_storage"]
    return cfg


def trial_key(spec: dict, index: int) -> str:
    return f"{spec['name']}/{index}"


FOUND_DIR = CONFIG_DIR / "found"
MONITOR_METRIC = "knn_monitor"


class SearchSpec(ExperimentSpec):
    """The search's flags, the space's text and the drawn samples. Built from bad flags it raises
    :class:`SearchInputError` naming the flag (``--reduction-factor 1: must be > 1``)."""

    input_error: ClassVar[type[UserError]] = SearchInputError
    kind, job, what, record_file = "search", "search", "search", "siamim_search.json"

    space_text: str  # the space file's YAML (a resumed search needs no file)
    config: str = "tiny"
    num_samples: int = Field(8, ge=1)
    seed: int = 0
    metric: str = MONITOR_METRIC
    mode: Literal["max", "min"] = Field("max", description="max or min")
    grace_period: int = Field(100, ge=1, description=">= 1 (steps)")  # Tune's time_attr is the trainer's global step
    reduction_factor: float = Field(2.0, gt=1)
    steps: int | None = Field(None, ge=2)
    storage: str = "runs/search"
    experiment: str = "siamim-search"
    samples: list[dict] = []  # filled by validate_search
    derived: dict = {}  # keys the search sets (the monitor's cadence)
    budget: int | None = None  # steps per trial, known once the data is (budget_steps)

    @property
    def trials(self) -> list[dict]:
        return self.samples

    @staticmethod
    def trial_name(config: dict) -> str:
        return trial_name(int(config["sample"]["index"]))

    def check(self) -> None:
        validate_search(self)

    def dry_run(self, have: dict[str, float], where: str) -> list[str]:
        return describe(self, have, where, budget_steps(self))

    def first_config(self) -> Config:
        return search_config(trial_spec(self), self.samples[0])

    def own_params(self) -> dict:
        keys = ("config", "num_samples", "seed", "metric", "mode", "grace_period", "reduction_factor", "budget")
        return {**{k: getattr(self, k) for k in keys}, "space": self.space_text[:6000]}

    def columns(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (self.metric, "loss"), tuple(self.samples[0])

    def detail(self) -> str:
        return f"{len(self.samples)} trials, {self.budget} steps each; "


def trial_spec(spec: SearchSpec) -> dict:
    """``spec`` as a trial's config builder takes it (before the search has a pretraining storage)."""
    return {**spec.model_dump(), "pretrain_storage": None}


def validate_search(spec: SearchSpec) -> None:
    """The space and every sampled config (the flags were checked as ``spec`` was built), before anything starts;
    fills ``spec.samples`` (unless it holds a resumed search's) and ``spec.derived``. Raises
    :class:`SearchInputError` naming the flag or key."""
    try:
        base = load_config(spec.config, list(spec.overrides))
    except ConfigError as err:
        raise SearchInputError(f"--config {spec.config} with the overrides: {err}") from err
    dims = parse_space(yaml.safe_load(spec.space_text), base)
    if spec.metric == MONITOR_METRIC:  # the metric exists only with the monitor on, at the steps it runs
        for dim in dims:
            if dim.key in ("eval.monitor_every", "train.log_every"):
                raise SearchInputError(
                    f"--space: {dim.key}: the monitor's cadence is the search's (ASHA reads {MONITOR_METRIC} at its "
                    f"steps); set it as an override ({dim.key}=N), not in the space"
                )
        every = base.eval.monitor_every or spec.grace_period  # a value at every rung (grace x factor^k)
        # the loop runs the monitor at its reporting steps only: train.log_every must divide the cadence
        spec.derived = {"eval.monitor_every": every, "train.log_every": math.gcd(every, base.train.log_every)}
    if not spec.samples:  # a resumed search keeps the samples it recorded (what its Tune trials hold)
        spec.samples = sample(dims, spec.num_samples, spec.seed)
    check_samples(spec.samples, lambda values: search_config(trial_spec(spec), values))


def budget_steps(spec: SearchSpec) -> int:
    """Training steps per trial (ASHA's ``max_t``): ``train.max_steps`` or the epochs' steps over the data.

    Reads the training set's size (imports torch); raises :class:`SearchInputError` when ``--grace-period``
    does not fit below it.
    """
    from siamim.orchestration.runs.resume import planned_steps

    cfg = search_config(trial_spec(spec), spec.samples[0])
    _, total = planned_steps(cfg)
    if cfg.train.max_steps is not None and cfg.train.max_steps > total:  # it would be cut short (as the grid)
        raise SearchInputError(
            f"--steps {cfg.train.max_steps}: past the end of the plan (train.epochs={cfg.train.epochs:g} of "
            f"{total} steps); add the train.epochs=... override, or give the budget as --epochs"
        )
    budget = cfg.train.max_steps or total
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
    """The dry-run text: the sampled trials, the budget and ASHA's rungs, per-trial resources, packing. A trial
    that cannot fit raises :class:`SearchInputError`, as the search itself would."""
    resources = spec.resource_lines(have, where)
    keys = list(spec.samples[0]) if spec.samples else []
    lines = [
        f"search {spec.name!r}: {len(spec.samples)} trials (--num-samples {spec.num_samples}, --seed {spec.seed}) "
        f"of --config {spec.config}" + (f" {' '.join(spec.overrides)}" if spec.overrides else ""),
        f"budget {budget} steps per trial; ASHA on {spec.metric} ({spec.mode}) compares trials at steps "
        f"{', '.join(map(str, rungs(spec, budget)))} (--grace-period {spec.grace_period}, --reduction-factor "
        f"{spec.reduction_factor:g})"
        + (f"; set by the search: {', '.join(f'{k}={v}' for k, v in spec.derived.items())}" if spec.derived else ""),
        *resources,
        f"best config -> {FOUND_DIR.relative_to(REPO_ROOT)}/{spec.name}.yaml (--config found/{spec.name})",
        "",
        "| trial | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    lines += [
        f"| {trial_name(i)} | " + " | ".join(str(v) for v in s.values()) + " |" for i, s in enumerate(spec.samples)
    ]
    return lines


__all__ = ["FOUND_DIR", "SearchSpec", "budget_steps", "describe", "rungs", "trial_spec", "validate_search"]
