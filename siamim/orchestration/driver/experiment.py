"""The Ray-free half of an experiment (the grid, ``jobs/ablate.py``, and the search, ``jobs/search.py``): the spec
with their shared flags, the dry run's resource lines, and the writer of their tables and plots.

The Ray half (Tune, the MLflow parent and child runs) is :mod:`siamim.orchestration.driver.tune`. Imports neither
Ray nor MLflow nor torch, so bad flags and dry runs stay fast.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator

from siamim.orchestration.driver.resources import RunName, TrialResources, check_trial_fits, packing


class ExperimentSpec(TrialResources):
    """The flags the grid and the search share (a pydantic model, JSON: the record keeps it for ``--resume``).

    A subclass sets :attr:`kind` (``ablation`` / ``search``: the tags' and params' prefix), :attr:`job`
    (``ablate`` / ``search``: ``jobs/<job>.py``, the log prefix), :attr:`what` (``grid`` / ``search``),
    :attr:`record_file` and ``input_error``, and defines ``trials``, ``trial_name(config)`` (a trial's Tune,
    Ray Train and MLflow name), ``check()`` (every trial's config resolves), ``first_config()`` (what the
    preflight checks) and ``dry_run(have, where)``.
    """

    kind: ClassVar[str]
    job: ClassVar[str]
    what: ClassVar[str]
    record_file: ClassVar[str]

    name: RunName
    overrides: list[str] = []
    steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    max_retries: int = Field(0, ge=0)
    storage: str
    tracking_uri: str | None = None
    experiment: str

    @model_validator(mode="after")
    def _one_budget(self) -> ExperimentSpec:
        if self.steps is not None and self.epochs is not None:
            raise self.input_error("--steps and --epochs: give one budget, not both")
        return self

    def own_params(self) -> dict:
        """The parent run's params of this job's own flags."""
        return {}

    def parent_params(self) -> dict:
        """The parent run's params: the flags, prefixed with :attr:`kind`."""
        keys = ("name", "steps", "epochs", "workers_per_trial", "cpus_per_worker", "gpus_per_worker")
        return {
            **{f"{self.kind}.{k}": getattr(self, k) for k in (*keys, "max_concurrent", "max_retries", "storage")},
            f"{self.kind}.overrides": " ".join(self.overrides) or "-",
            f"{self.kind}.trials": len(self.trials),
            **{f"{self.kind}.{k}": v for k, v in self.own_params().items()},
        }

    def columns(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The metrics and params the MLflow runs table shows."""
        return (), ()

    def detail(self) -> str:
        """Text of the "starting" line before the parent run."""
        return ""

    def resource_lines(self, have: dict[str, float], where: str, evaluation: bool = False) -> list[str]:
        """The dry run's per-trial resources and packing; a trial that cannot fit raises :attr:`input_error`,
        as the run would."""
        check_trial_fits(self, have, self.input_error)
        pack, need = packing(self, have), self.trial_need()
        return [
            f"per trial: {self.workers_per_trial} Ray Train worker(s) x ({self.cpus_per_worker:g} CPU"
            + (f", {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else "")
            + f") = {need['CPU']:g} CPU"
            + (f", {need['GPU']:g} GPU" if need["GPU"] else "")
            + ("; evaluation task: the same" if evaluation else "")
            + "; trial actor: 0 CPU",
            f"cluster ({where}): {have['CPU']:g} CPU, {have['GPU']:g} GPU -> {pack['by_resources']} trial(s) fit at "
            f"once; running {pack['concurrent']} at a time (--max-concurrent {self.max_concurrent or 'auto'}), "
            f"about {pack['waves']} wave(s)",
        ]


# --------------------------------------------------------------------------- the table and plot writer
def fmt(value, spec: str = ".4g") -> str:
    """A table cell: ``-`` for None / NaN, a float as ``spec``, anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def markdown_table(header: Iterable[str], rows: Iterable[Iterable]) -> str:
    """A markdown table (cells as text already)."""
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(header: Iterable, rows: Iterable[Iterable]) -> str:
    """CSV text of ``header`` and ``rows``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def figure(panels: int = 1, size: tuple[float, float] = (7.0, 4.2)):
    """A matplotlib figure (headless) of ``panels`` side by side: ``(fig, axes)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(size[0] * panels, size[1]), squeeze=False)
    return fig, list(axes[0])


def save_png(fig, path: str | Path) -> Path:
    """Write a matplotlib figure to ``path`` (parents made), 110 dpi, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["ExperimentSpec", "csv_table", "figure", "fmt", "markdown_table", "save_png"]
