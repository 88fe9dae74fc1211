"""The grid's spec and its checks before anything starts (``jobs/ablate.py --dry-run`` stops after them).

:class:`GridSpec` holds the flags (the shared ones are :class:`~siamim.orchestration.driver.experiment.ExperimentSpec`'s)
and checks them as it is built; :meth:`GridSpec.check` checks every trial's resolved config (:func:`trial_config`:
the row's preset, the grid's overrides, the seed, the budget and the trial's resources); :func:`describe` is the dry
run's text. Imports neither Ray nor MLflow nor torch.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import ConfigDict, Field, field_validator

from siamim.config import ConfigError
from siamim.errors import UserError
from siamim.eval.protocols import parse_protocols
from siamim.orchestration.ablation.rows import parse_rows, row_config, row_source, switches_of
from siamim.orchestration.ablation.table import headline_keys
from siamim.orchestration.driver.experiment import ExperimentSpec
from siamim.orchestration.driver.resources import flag_overrides, packing
from siamim.orchestration.runs.resume import check_fresh_plan

DEFAULT_PROTOCOLS = "knn,lin,fewshot,dense,correspondence"


class AblationInputError(UserError, ValueError):
    """A flag or the cluster cannot run the grid; the message names the flag."""


class GridSpec(ExperimentSpec):
    """The grid's flags. Built from bad flags it raises :class:`AblationInputError` naming the flag
    (``--seeds 0: must be a whole number >= 1``)."""

    model_config = ConfigDict(serialize_by_alias=True)  # the record's key is "register" (see register_model)
    input_error: ClassVar[type[UserError]] = AblationInputError
    kind, job, what, record_file = "ablation", "ablate", "grid", "siamim_ablation.json"

    rows: list[str]  # --rows text or names -> names in table order
    seeds: int = Field(ge=1, description="a whole number >= 1")
    protocols: list[str]  # --protocols text or names -> names in run order
    max_retries: int = Field(1, ge=0)
    storage: str = "runs/ablation"
    experiment: str = "siamim-ablation"
    # --register: each trial's encoder, a version of MLflow model <register>-<row>; the attribute `register` is
    # ABCMeta's (pydantic warns of the shadowing: pydantic/pydantic#7009), so the name is the alias only
    register_model: str | None = Field(None, alias="register")

    @field_validator("rows", mode="before")
    @classmethod
    def _rows(cls, value) -> list[str]:
        return parse_rows(",".join(value) if isinstance(value, list) else value)

    @field_validator("protocols", mode="before")
    @classmethod
    def _protocols(cls, value) -> list[str]:
        return parse_protocols(value)

    @property
    def trials(self) -> list[tuple[str, int]]:
        return [(r, s) for r in self.rows for s in range(self.seeds)]

    @staticmethod
    def trial_name(config: dict) -> str:
        return trial_run_name(config["row"], config["seed"])

    def check(self) -> None:
        validate_spec(self)

    def dry_run(self, have: dict[str, float], where: str) -> list[str]:
        return describe(self, have, where)

    def first_config(self):
        return trial_config({**self.model_dump(), "pretrain_storage": self.storage}, self.rows[0], 0)

    def own_params(self) -> dict:
        return {"seeds": self.seeds, "rows": ",".join(self.rows), "protocols": ",".join(self.protocols)}

    def columns(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return tuple(key for key, _, _ in headline_keys(self.protocols)), ("ablation.row", "ablation.seed")


def trial_key(row: str, seed: int) -> str:
    return f"{row}/{seed}"


def trial_run_name(row: str, seed: int) -> str:
    return f"{row}-s{seed}"


def trial_overrides(spec: dict, row: str, seed: int) -> list[str]:
    """The dotted overrides of one trial, after the row's preset (the grid's flags win over ``spec['overrides']``)."""
    return [*spec["overrides"], f"train.seed={seed}", *flag_overrides(spec, trial_run_name(row, seed))]


def trial_config(spec: dict, row: str, seed: int):
    cfg = row_config(row, trial_overrides(spec, row, seed))
    cfg.run.storage = spec["pretrain_storage"]
    return cfg


def validate_spec(spec: GridSpec) -> None:
    """Every trial's config resolves (the flags were checked as ``spec`` was built); raises
    :class:`AblationInputError` naming the row and the key, or ``--steps`` past a row's plan."""
    for row in spec.rows:  # unknown keys, bad values name the key
        try:
            cfg = trial_config({**spec.model_dump(), "pretrain_storage": spec.storage}, row, 0)
        except ConfigError as err:
            raise AblationInputError(f"row {row} ({row_source(row)}): {err}") from err
        if spec.steps is not None:  # train.max_steps only stops early: past the epochs' plan it would be cut short
            try:
                check_fresh_plan(cfg)
            except ConfigError as err:
                raise AblationInputError(
                    f"--steps {spec.steps}: row {row} ({row_source(row)}): {err}; in a grid, add the "
                    "train.epochs=... override, or give the budget as --epochs"
                ) from err


def describe(spec: GridSpec, have: dict[str, float], where: str) -> list[str]:
    """The dry-run text: trials, per-trial resources, estimated packing. A trial that cannot fit raises
    :class:`AblationInputError` as the run would (no "1 trial fits" for a worker larger than any node)."""
    resources = spec.resource_lines(have, where, evaluation=True)
    budget = f"{spec.steps} steps" if spec.steps else f"{spec.epochs} epochs" if spec.epochs else "the preset's epochs"
    lines = [
        f"ablation grid {spec.name!r}: {len(spec.rows)} rows x {spec.seeds} seeds = {packing(spec, have)['trials']} "
        f"trials, budget {budget}, protocols {','.join(spec.protocols)}",
        *resources,
        "",
        "| trial | row source | switches (resolved config) |",
        "|---|---|---|",
    ]
    for row, seed in spec.trials:
        cfg = trial_config({**spec.model_dump(), "pretrain_storage": spec.storage}, row, seed)
        sw = ", ".join(f"{k}={v}" for k, v in switches_of(cfg).items())
        lines.append(f"| {trial_key(row, seed)} | {row_source(row)} | {sw} |")
    return lines


__all__ = ["DEFAULT_PROTOCOLS", "AblationInputError", "GridSpec", "describe", "trial_config", "validate_spec"]
