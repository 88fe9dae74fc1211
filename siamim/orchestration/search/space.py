"""The search space of ``jobs/search.py``: a YAML mapping of dotted config keys to samplers (pure, no Ray).

Format (one sampler per key; sections may also be nested, ``optim: {blr: {...}}``)::

    optim.blr:      {loguniform: [1.0e-4, 3.0e-3]}   # exp(U(log low, log high)); low > 0
    views.crop_min: {uniform: [0.2, 0.5]}            # U(low, high)
    model.depth:    {randint: [2, 6]}                # an integer in [low, high], both ends included
    optim.ema_m0:   {choice: [0.99, 0.995, 0.996]}   # one of the values, equally likely
    loss.type:      {grid: [unigrad, l2]}            # every value: each one crossed with the random samples

The trials are ``--num-samples`` random draws (seeded) of the random samplers, crossed with every
combination of the ``grid`` values (Ray Tune's ``grid_search`` x ``num_samples``). The driver draws them
before anything starts, so each one is validated as a full config and the dry run prints what will run.

Every error is a :class:`SearchInputError` naming the key and the fix.
"""

from __future__ import annotations

import difflib
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from siamim.config import Config, ConfigError, apply_overrides, flatten
from siamim.errors import UserError

SAMPLERS = ("loguniform", "uniform", "randint", "choice", "grid")
RANGES = ("loguniform", "uniform", "randint")
FORMAT = (
    "{loguniform: [low, high]}, {uniform: [low, high]}, {randint: [low, high]}, {choice: [v1, v2, ...]} "
    "or {grid: [v1, v2, ...]}"
)
FLAG_KEYS = ("run.",)  # set by the search's own flags (resources, names, storage): never searched


class SearchInputError(UserError, ValueError):
    """The search space, a flag or a sampled config cannot run; the message names the key or flag. Exit 2."""


@dataclass(frozen=True)
class Dim:
    """One searched key: ``kind`` in :data:`SAMPLERS`, ``args`` its ``[low, high]`` or values."""

    key: str
    kind: str
    args: tuple

    def draw(self, rng: random.Random) -> Any:
        """One value of a random sampler (not ``grid``)."""
        if self.kind == "choice":
            return self.args[rng.randrange(len(self.args))]
        low, high = self.args
        if self.kind == "randint":
            return rng.randint(int(low), int(high))
        if self.kind == "uniform":
            return _round(rng.uniform(low, high))
        return _round(math.exp(rng.uniform(math.log(low), math.log(high))))

    def edges(self) -> tuple:
        """The values that bound what :meth:`draw` can return (validated as configs before sampling)."""
        return self.args

    def describe(self) -> str:
        return f"{self.kind}{list(self.args)}"


def _round(value: float) -> float:
    """Six significant digits: what YAML, MLflow params and the table show."""
    return float(f"{value:.6g}")


def _flat_space(data: dict, known: dict, prefix: str = "") -> dict[str, Any]:
    """Nested sections flattened to dotted keys, down to each config key (``known``: the flat config)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and dotted not in known and not (set(value) & set(SAMPLERS)):
            out.update(_flat_space(value, known, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _dim(key: str, spec: Any, where: str) -> Dim:
    def bad(why: str) -> SearchInputError:
        return SearchInputError(f"{where}: {key}: {why}")

    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
        raise bad(f"{spec!r} is not a sampler; write {key}: one of {FORMAT}")
    kind, args = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise bad(f"{kind} needs a non-empty list of values, e.g. {{{kind}: [0.99, 0.995]}}")
        return Dim(key, kind, tuple(args))
    if not isinstance(args, list) or len(args) != 2 or not all(_is_number(a) for a in args):
        raise bad(f"{kind} needs [low, high], two numbers, e.g. {{{kind}: [1.0e-4, 3.0e-3]}}; got {args!r}")
    low, high = args
    if kind == "randint" and not all(float(a).is_integer() for a in args):
        raise bad(f"randint needs whole numbers [low, high]; got {args!r} (use uniform for a float range)")
    if low >= high:
        raise bad(f"{kind} [{low}, {high}]: low must be below high; swap them or use choice for one value")
    if kind == "loguniform" and low <= 0:
        raise bad(f"loguniform [{low}, {high}]: low must be > 0 (a log scale); use uniform to include {low}")
    return Dim(key, kind, (int(low), int(high)) if kind == "randint" else (float(low), float(high)))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_space(path: str | Path) -> str:
    """The text of the space file ``path`` (``--space``), checked to be a non-empty YAML mapping."""
    path = Path(path)
    if not path.is_file():
        raise SearchInputError(f"--space {path}: no such file; write a YAML mapping of config keys, e.g. {FORMAT}")
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SearchInputError(f"--space {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data:
        raise SearchInputError(f"--space {path}: must be a non-empty mapping of config keys to samplers ({FORMAT})")
    return text


def parse_space(data: dict, base: Config, where: str = "--space") -> list[Dim]:
    """Validated dimensions of ``data`` (:func:`read_space`) against the ``base`` config.

    Each key must be a config key (closest one suggested), not a ``run.*`` key, with a well-formed sampler
    whose bounds / values each give a valid config. Raises :class:`SearchInputError` naming the key.
    """
    known = flatten(base)
    dims = []
    for key, spec in _flat_space(data, known).items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; see the config's keys in docs/platform.md"
            raise SearchInputError(f"{where}: {key} is not a config key{hint}")
        if key.startswith(FLAG_KEYS):
            raise SearchInputError(
                f"{where}: {key}: run.* keys are set by the search's flags; remove it from the space"
            )
        dim = _dim(key, spec, where)
        for value in dim.edges():
            try:
                apply_overrides(base, {key: value})
            except ConfigError as err:
                raise SearchInputError(
                    f"{where}: {key}: {dim.kind} value {value!r} gives an invalid config: {err}"
                ) from err
        dims.append(dim)
    return dims


def sample(dims: list[Dim], num_samples: int, seed: int) -> list[dict[str, Any]]:
    """The trials' sampled values, ``[{key: value}]``: every grid combination x ``num_samples`` seeded draws.

    Deterministic in ``(dims, num_samples, seed)``: a dry run prints the trials a real run makes.
    """
    grid = [d for d in dims if d.kind == "grid"]
    rand = [d for d in dims if d.kind != "grid"]
    rng = random.Random(seed)
    out = []
    for _ in range(num_samples):
        draws = {d.key: d.draw(rng) for d in rand}
        for combo in itertools.product(*(d.args for d in grid)):
            out.append({**draws, **dict(zip((d.key for d in grid), combo, strict=True))})
    return [{d.key: values[d.key] for d in dims} for values in out]  # the space's key order


def check_samples(samples: list[dict], build) -> None:
    """Every sampled config resolves: ``build(values)`` raises ConfigError -> :class:`SearchInputError`."""
    for index, values in enumerate(samples):
        try:
            build(values)
        except ConfigError as err:
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            raise SearchInputError(f"--space: sample {index} ({shown}) gives an invalid config: {err}") from err
