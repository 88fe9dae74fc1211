"""Resuming a run: find it, rebuild its config, pick its checkpoint, and plan how far it trains.

``jobs/pretrain.py --resume NAME [--more-steps N]`` goes through
:func:`resume_target` (the run record and stored config, overrides on top) and
:func:`plan_resumed_run` (the newest intact checkpoint, its MLflow run id, the
new stop); a new run's plan is checked by :func:`check_fresh_plan`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass

from siamim.config import Config, ConfigError, apply_overrides, from_dict
from siamim.orchestration.runs import storage as st
from siamim.orchestration.runs.checkpoints import ResumePoint, checkpoint_run_id, resume_point
from siamim.orchestration.errors import LaunchInputError

logger = logging.getLogger(__name__)


@dataclass
class Target:
    """What a launch trains: the config, the run's name, and its run record when it resumes."""

    cfg: Config
    run_name: str
    record: dict | None  # the stored run record (None: a new run)
    tracking_uri: str | None  # explicit, or the record's when neither flag nor environment names one


# --------------------------------------------------------------------------- config / names
def new_run_name(cfg: Config) -> str:
    # The experiment name may hold characters a run name cannot (docs: run.name); they become '-'.
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", cfg.run.experiment).strip("-._") or "run"
    return cfg.run.name or f"{stem[:80]}-{time.strftime('%Y%m%d-%H%M%S')}"


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


def resume_target(
    cfg: Config,
    storage: st.Storage,
    resume: str | None | bool,
    overrides: list[str] | dict | None,
    tracking_uri: str | None,
) -> Target:
    """A new run of ``cfg`` (``resume`` False), or the stored run ``resume`` names with ``overrides`` on top."""
    if resume is False:
        return Target(cfg, new_run_name(cfg), None, tracking_uri)
    st.check_writable(storage)
    record = find_run(storage, resume if isinstance(resume, str) else None)
    cfg = apply_overrides(from_dict(record["config"]), overrides)
    cfg.run.storage = storage.uri
    if tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        tracking_uri = record["tracking_uri"]
    return Target(cfg, record["name"], record, tracking_uri)


def check_new_name(storage: st.Storage, run_name: str) -> None:
    """A new run must not reuse the name of a run (or a Ray experiment) under ``storage``."""
    if st.exists(storage, run_name, st.RUN_RECORD) or st.exists(storage, run_name, st.RAY_SNAPSHOT):
        raise LaunchInputError(
            f"a run named {run_name!r} already exists under {storage.display()}; "
            f"continue it with --resume {run_name}, or pick another run.name"
        )


# --------------------------------------------------------------------------- plans
def planned_steps(cfg: Config) -> tuple[int, int]:
    """``(steps per epoch, total steps)`` of ``cfg``'s training data (reads the dataset's size; its errors
    propagate): the one plan of a new run, a resume, a grid's and a search's trials."""
    from siamim.data.sources import build_source
    from siamim.train.loop import step_plan

    n = len(build_source(cfg.data.dataset, cfg.data.root, "train"))
    if cfg.data.train_subset is not None:
        n = min(n, cfg.data.train_subset)
    try:
        return step_plan(cfg, n)[:2]
    except ValueError as err:
        raise ConfigError(str(err)) from err


def known_plan(cfg: Config) -> tuple[int, int] | None:
    """:func:`planned_steps`, or None when the dataset's size is not known up front (a streamed source): the
    plan checks are skipped then."""
    try:
        return planned_steps(cfg)
    except ConfigError:
        raise
    except Exception:  # not a map-style source here; the loop reports data problems itself
        return None


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
    from siamim.train.loop import plan_steps  # torch: not at import time

    total = plan_steps(cfg.train.epochs, spe)
    if more_steps is not None:
        target = step + more_steps
        if target > total:
            cfg.train.epochs = target / spe
            total = plan_steps(cfg.train.epochs, spe)
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
    plan = known_plan(cfg)
    if plan is None:
        return
    spe, total = plan
    if cfg.train.max_steps > total:
        raise ConfigError(
            f"train.max_steps={cfg.train.max_steps} lies past the end of the plan (train.epochs={cfg.train.epochs:g} "
            f"x {spe} steps per epoch = {total} steps); raise train.epochs to {cfg.train.max_steps / spe:.6g} "
            "for that many steps, or lower train.max_steps"
        )


def plan_resumed_run(target: Target, storage: st.Storage, more_steps: int | None, log=print) -> ResumePoint:
    """Pick the newest intact checkpoint of ``target`` and set its config's stop; returns the point.

    The MLflow run to continue is the one in the checkpoint's Ray metadata (the
    run record's for checkpoints written before the metadata carried it); it is
    written into ``target.record["mlflow_run_id"]``.
    """
    run_name, cfg = target.run_name, target.cfg
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
        run_id = checkpoint_run_id(storage, point.checkpoint)
        if run_id is not None and run_id != target.record["mlflow_run_id"]:
            logger.warning(
                "run record %s names MLflow run %s, its checkpoint %s: continuing the checkpoint's",
                run_name,
                target.record["mlflow_run_id"],
                run_id,
            )
        target.record["mlflow_run_id"] = run_id or target.record["mlflow_run_id"]
    rec_plan = (point.checkpoint.record or {}).get("plan") if point.checkpoint else None
    spe = int(rec_plan["steps_per_epoch"]) if rec_plan else (known_plan(cfg) or (None,))[0]
    resume_cmd = f"python jobs/pretrain.py --resume {run_name} --storage '{storage.uri}'"
    if spe is not None:
        target.cfg = plan_resume(cfg, run_name, point.step, spe, more_steps, resume_cmd, log)
    elif more_steps is not None:
        raise LaunchInputError(
            f"--more-steps: run {run_name}'s checkpoint records no plan and the size of its "
            "training data is unknown; raise train.epochs / train.max_steps instead"
        )
    return point
