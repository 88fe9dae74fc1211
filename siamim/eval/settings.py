"""``cfg.eval``: the suite's common keys plus one section per registered protocol (no torch).

``eval.seed``, ``eval.device``, ``eval.batch_size``, ``eval.train_limit``, ``eval.test_limit``
are shared by every protocol; ``eval.<protocol>.<key>`` (``eval.knn.k``, ``eval.lin.steps``,
``eval.ft.blr``) belong to one protocol and are declared by its module under
:mod:`siamim.eval.protocols`. Every check is a field constraint or a validator of the
section that holds the key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, create_model

from siamim.eval.protocols import protocols
from siamim.sections import Section


class EvalCommon(Section):
    """The keys every protocol shares."""

    seed: int = 0  # seeds every subset, mosaic, corruption and probe of the suite
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(512, ge=1)  # feature-extraction batch
    # class-balanced seeded subset of the train split (quick runs); None: all (>= 10: an image per class)
    train_limit: int | None = Field(None, ge=10)
    test_limit: int | None = Field(None, ge=10)  # same for the test split; None: all
    # the online kNN monitor (siamim.eval.monitor): every N steps during pretraining (0: off), on a fixed
    # class-balanced seeded bank / query subset, reported as the metric knn_monitor
    monitor_every: int = Field(0, ge=0)
    monitor_bank: int = Field(5000, ge=20)
    monitor_queries: int = Field(1000, ge=10)


EvalConfig = create_model(
    "EvalConfig",
    __base__=EvalCommon,
    __module__=__name__,
    __doc__="``cfg.eval``: :class:`EvalCommon`'s keys plus ``eval.<name>`` for every registered protocol.",
    **{p.name: (p.settings, Field(default_factory=p.settings)) for p in protocols()},
)
