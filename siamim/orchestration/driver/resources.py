"""Ray resources: what a worker group needs, what the cluster (or this machine) has, and how they fit.

Every driver asks one question, :func:`shortfall`: does a group of W workers x (C CPUs, G GPUs) fit
what Ray has? The pretraining job asks it of its worker group (``run.num_workers``, or
``run.min_workers`` when elastic: :func:`resource_shortfall`), the grid and the search of one trial
(``--workers-per-trial``: :func:`check_trial_fits`; their specs are pydantic models on :class:`TrialResources`);
those two also ask how many trials run at once (:func:`packing`). Resources are ``{"CPU", "GPU", "max_node_GPU"}``
(the most GPUs on one node: a worker's GPUs must sit on one node). Imports neither Ray nor torch at module
level, so bad flags and dry runs stay fast.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from siamim.config import Config, check_run_name
from siamim.errors import UserError

_EPS = 1e-9


@dataclass(frozen=True)
class Group:
    """A worker group: ``workers`` x (``cpus``, ``gpus``) each; ``flags`` name the three settings for messages."""

    workers: int
    cpus: float
    gpus: float
    flags: tuple[str, str, str]

    def need(self) -> dict[str, float]:
        """The group's CPUs and GPUs in all."""
        return {"CPU": self.workers * self.cpus, "GPU": self.workers * self.gpus}

    def setting(self, i: int) -> str:
        flag, value = self.flags[i], (self.workers, self.cpus, self.gpus)[i]
        return f"{flag} {value:g}" if flag.startswith("--") else f"{flag}={value:g}"


def shortfall(group: Group, have: dict[str, float]) -> str | None:
    """What ``have`` lacks for ``group`` (None when it fits), naming the settings and both numbers."""
    for i, kind in ((1, "CPU"), (2, "GPU")):
        need = group.need()[kind]
        if need > have.get(kind, 0.0) + _EPS:
            return f"{group.setting(0)} x {group.setting(i)} needs {need:g} {kind}s; the Ray cluster has {have.get(kind, 0.0):g}"
    largest = have.get("max_node_GPU", have.get("GPU", 0.0))
    if group.gpus > largest + _EPS:
        return f"{group.setting(2)}: no node has that many GPUs (largest: {largest:g})"
    return None


# --------------------------------------------------------------------------- the pretraining job's group
def smallest_group(cfg: Config) -> Group:
    """The smallest worker group ``cfg`` may run: ``run.min_workers`` when elastic, else ``run.num_workers``."""
    r = cfg.run
    key = "run.min_workers" if r.min_workers is not None else "run.num_workers"
    workers = r.min_workers if r.min_workers is not None else r.num_workers
    gpus = r.gpus_per_worker if r.use_gpu else 0.0
    return Group(workers, r.cpus_per_worker, gpus, (key, "run.cpus_per_worker", "run.gpus_per_worker"))


def resource_shortfall(cfg: Config, total: dict[str, float]) -> str | None:
    """What ``total`` (``ray.cluster_resources()``) lacks for the smallest group ``cfg`` may run; None when it fits."""
    return shortfall(smallest_group(cfg), {"max_node_GPU": math.inf, **total})


def full_size_warning(cfg: Config, total: dict[str, float]) -> str | None:
    """A warning (an autoscaler may still add nodes) when ``total`` fits the smallest group but not ``run.num_workers``."""
    r = cfg.run
    flags = ("run.num_workers", "run.cpus_per_worker", "run.gpus_per_worker")
    full = Group(r.num_workers, r.cpus_per_worker, r.gpus_per_worker if r.use_gpu else 0.0, flags)
    short = shortfall(full, {"max_node_GPU": math.inf, **total})
    if short is None:
        return None
    return f"{short}. Training waits until an autoscaler adds nodes (lower --num-workers otherwise)"


def fit_hint(cfg: Config, total: dict[str, float]) -> str:
    """How to make the pretraining job's request fit ``total``."""
    if cfg.run.use_gpu:
        gpus = total.get("GPU", 0.0)
        return f"lower --num-workers to {int(gpus // cfg.run.gpus_per_worker)}" if gpus else "use a cluster with GPUs"
    cpus = total.get("CPU", 0.0)
    return (
        f"lower --num-workers to {max(1, int(cpus // cfg.run.cpus_per_worker))} or --cpus-per-worker to "
        f"{cpus / cfg.run.num_workers:g}"
    )


# --------------------------------------------------------------------------- a grid's or a search's trials
def flag_error(err: ValidationError, spec: type[TrialResources]) -> UserError:
    """pydantic's first error as a ``spec.input_error`` naming the flag (``--seeds 0: must be a whole number >= 1``:
    the field's ``description``, else its bound); a validator's :class:`~siamim.errors.UserError` as it is."""
    first = err.errors()[0]
    ctx, name = first.get("ctx") or {}, str(first["loc"][0]) if first["loc"] else ""
    flag, cause, field = "--" + name.replace("_", "-"), ctx.get("error"), spec.model_fields.get(name)
    if isinstance(cause, UserError):
        return cause
    if cause is not None:
        return spec.input_error(str(cause) if str(cause).startswith("--") else f"{flag}: {cause}")
    if field is not None and field.description:
        must = f"must be {field.description}"
    elif first["type"] in ("greater_than", "greater_than_equal"):
        op, bound = (">", ctx["gt"]) if "gt" in ctx else (">=", ctx["ge"])
        must = "must be positive" if (op, bound) == (">", 0) else f"must be {op} {bound:g}"
    else:
        must = first["msg"]
    value = first["input"]
    return spec.input_error(f"{flag} {f'{value:g}' if isinstance(value, float) else value}: {must}")


RunName = Annotated[str, BeforeValidator(lambda value: check_run_name(str(value or ""), "--name"))]


class TrialResources(BaseModel):
    """What one trial of a grid or a search holds: Ray Train workers and their CPUs / GPUs; how many run at once.

    The base of the grid's and the search's specs: pydantic models (``model_dump()`` is JSON: the experiment's
    record keeps it for ``--resume``), each flag's range a field constraint. A bad value raises the spec's
    :attr:`input_error` naming the flag (:func:`flag_error`).
    """

    model_config = ConfigDict(extra="forbid")
    input_error: ClassVar[type[UserError]] = UserError

    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_concurrent: int | None = Field(None, ge=1)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise flag_error(err, type(self)) from None

    def trial_group(self) -> Group:
        return Group(
            self.workers_per_trial,
            self.cpus_per_worker,
            self.gpus_per_worker,
            ("--workers-per-trial", "--cpus-per-worker", "--gpus-per-worker"),
        )

    def trial_need(self) -> dict[str, float]:
        return self.trial_group().need()


def flag_overrides(spec: dict, run_name: str) -> list[str]:
    """What a trial's flags set: the budget (``spec['steps']`` / ``['epochs']``), its workers and resources
    (``workers_per_trial``, ``cpus_per_worker``, ``gpus_per_worker``), ``run.experiment`` and ``run.name``;
    the grid's and the search's trials alike."""
    out = []
    if spec.get("steps") is not None:
        out.append(f"train.max_steps={spec['steps']}")
    if spec.get("epochs") is not None:
        out.append(f"train.epochs={spec['epochs']}")
    gpus = float(spec.get("gpus_per_worker") or 0.0)
    out += [
        f"run.num_workers={spec['workers_per_trial']}",
        f"run.cpus_per_worker={spec['cpus_per_worker']}",
        f"run.use_gpu={'true' if gpus > 0 else 'false'}",
        f"run.experiment={spec['experiment']}",
        f"run.name={run_name}",
        f"run.max_failures={spec.get('train_max_failures', 0)}",
    ]
    if gpus > 0:
        out.append(f"run.gpus_per_worker={gpus}")
    return out


def check_trial_fits(spec: TrialResources, have: dict[str, float], error: type[UserError] = UserError) -> None:
    """One trial must fit the cluster; raises ``error`` naming the flags."""
    short = shortfall(spec.trial_group(), have)
    if short:
        raise error(f"one trial does not fit: {short}")


def packing(spec: TrialResources, have: dict[str, float]) -> dict:
    """How many of the spec's trials (``len(spec.trials)``) run at once (resources, then ``--max-concurrent``)
    and in how many waves."""
    need, trials = spec.trial_need(), len(spec.trials)
    fits = [math.floor(have["CPU"] / need["CPU"] + _EPS)]
    if need["GPU"] > 0:
        fits.append(math.floor(have["GPU"] / need["GPU"] + _EPS))
    by_resources = max(1, min(fits))
    concurrent = min(by_resources, spec.max_concurrent or by_resources, trials)
    return {
        "by_resources": by_resources,
        "concurrent": concurrent,
        "waves": math.ceil(trials / concurrent),
        "trials": trials,
    }


# --------------------------------------------------------------------------- what Ray has
def local_resources() -> dict[str, float]:
    """CPUs and GPUs an embedded Ray instance on this machine would have (no Ray started)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:
        gpus = 0
    return {"CPU": float(cpus), "GPU": float(gpus), "max_node_GPU": float(gpus)}


def cluster_resources() -> dict[str, float]:
    """Totals of the connected Ray cluster (and the most GPUs on one node)."""
    import ray

    total = ray.cluster_resources()
    node_gpus = [n.get("Resources", {}).get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    return {
        "CPU": float(total.get("CPU", 0.0)),
        "GPU": float(total.get("GPU", 0.0)),
        "max_node_GPU": float(max(node_gpus, default=0.0)),
    }


def dry_run_resources(address: str | None) -> tuple[dict[str, float], str]:
    """``(resources, where)`` a dry run plans with: the cluster's at ``address`` / ``$RAY_ADDRESS`` (joined to
    read its size, nothing started), else this machine's as an embedded Ray instance would see them."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        return local_resources(), "this machine, embedded Ray"
    import ray

    ray.init(address=address)
    try:
        return cluster_resources(), f"Ray cluster {address or os.environ['RAY_ADDRESS']}"
    finally:
        ray.shutdown()
