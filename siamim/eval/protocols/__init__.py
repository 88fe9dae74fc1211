"""The evaluation protocols: one module per protocol, found by listing this folder.

A protocol module (``knn.py``, ``lin.py``, ...) defines ``PROTOCOL = Protocol(...)``:
its name (the ``--protocols`` entry and the ``eval.<name>`` config section), its
place in the run order, its settings (a :class:`~siamim.sections.Section`: the keys
``eval.<name>.*`` with their ranges), its run function, its report columns and its
headline (the one column the ablation grid's table shows for it).
Dropping a new module here registers it: :func:`protocols` imports every module of
this folder (names starting with ``_`` excepted) and collects their ``PROTOCOL``.

Protocol modules import nothing heavy at their top (no torch, no numpy): the
command line is checked before torch is imported. The run function imports what it
computes with: the computations of :mod:`siamim.eval` (which take their settings as
arguments and never import a protocol), never another protocol module.

A run function is ``run(ctx, settings, progress) -> {metric key: value}``:

- ``ctx``: the :class:`~siamim.eval.runner.Context` of one representation (its
  data, cached features, the full ``eval`` settings, state shared between protocols);
- ``settings``: this protocol's section, ``cfg.eval.<name>``;
- ``progress``: a :class:`~siamim.train.progress.TaskProgress` prefixed ``[<name>]``.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass

from siamim.plugins import PluginFolder
from siamim.sections import Section


@dataclass(frozen=True)
class Headline:
    """The protocol's column in the ablation grid's table.

    Args:
        key: the metric key of the run function's result that the column shows (one of ``columns``).
        title: the column's title.
        paper: the paper column the ablation rows' paired differences compare it with
            (one of :data:`siamim.orchestration.ablation.table.PAPER_COLUMNS`).
    """

    key: str
    title: str
    paper: str


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol, as its module declares it.

    Args:
        name: ``--protocols`` entry and config section ``eval.<name>``.
        order: run order (lower first; e.g. FT before robust, which reuses the FT model).
        settings: the section class of ``eval.<name>.*``.
        run: ``run(ctx, settings, progress) -> dict[str, float]`` (metrics in percent or counts).
        columns: ``{metric key: (paper column, our metric)}``: the report's description of each key.
        summary: one line for ``--help`` and the docs.
        headline: the column of the ablation grid's table.
    """

    name: str
    order: int
    settings: type[Section]
    run: Callable
    columns: dict[str, tuple[str, str]]
    summary: str
    headline: Headline


def _plugins() -> PluginFolder:
    return PluginFolder(__name__, __path__, "protocol")


@functools.cache
def _registry() -> tuple[Protocol, ...]:
    found = []
    folder = _plugins()
    for name in folder.names():
        module = folder.module(name)
        proto = getattr(module, "PROTOCOL", None)
        if not isinstance(proto, Protocol):
            raise TypeError(f"{module.__name__} defines no PROTOCOL = Protocol(...)")
        if proto.name != name:
            raise ValueError(f"{module.__name__}: PROTOCOL.name={proto.name!r} must be the module's name")
        if proto.headline.key not in proto.columns:
            raise ValueError(f"{module.__name__}: headline key {proto.headline.key!r} is not one of its columns")
        found.append(proto)
    return tuple(sorted(found, key=lambda p: (p.order, p.name)))


def protocols() -> tuple[Protocol, ...]:
    """Every registered protocol, in run order."""
    return _registry()


def names() -> list[str]:
    """The protocol names, in run order."""
    return [p.name for p in _registry()]


def get(name: str) -> Protocol:
    """The protocol called ``name``; an unknown name raises ``ValueError`` with the closest one."""
    for p in _registry():
        if p.name == name:
            return p
    valid = names()
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown protocol {name!r}: choose from {', '.join(valid)} (or 'all'){hint}")


def parse_protocols(text: str | list[str]) -> list[str]:
    """``"knn,lin"`` (or a list, or ``"all"``) -> protocol names in run order.

    An unknown name raises ``ValueError`` listing the valid ones and the closest match.
    """
    given = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not given:
        raise ValueError(f"no protocol given; choose from {', '.join(names())} (or 'all')")
    if given == ["all"]:
        return names()
    for name in given:
        get(name)
    return [n for n in names() if n in given]
