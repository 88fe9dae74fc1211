"""Run the registered evaluation protocols on one representation, sharing data and cached features.

``evaluate(rep, cfg, protocols)`` runs each protocol of :mod:`siamim.eval.protocols` in
run order and returns one :class:`ProtocolResult` per protocol (metrics in percent, wall
time in seconds). A :class:`Suite` holds the image sets of one config; pass the same suite
to several ``evaluate`` calls (a checkpoint and its baselines) so the data is prepared once.
A :class:`Context` holds what the protocols of one representation share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from siamim.data.sources import build_source
from siamim.device import resolve_device
from siamim.eval.imageset import ImageSet, load_image_set
from siamim.eval.linear_probe import LinearProbe, train_linear_probe
from siamim.eval.protocols import get, parse_protocols
from siamim.eval.representation import extract_many
from siamim.eval.subsets import limit_indices
from siamim.train.progress import TaskProgress

Log = Callable[[str], None]


@dataclass
class ProtocolResult:
    protocol: str
    metrics: dict[str, float]
    wall_s: float
    notes: dict[str, str] = field(default_factory=dict)


class Suite:
    """The train/test image sets of ``cfg`` (``eval.train_limit`` / ``eval.test_limit`` applied), built once
    and shared by representations; :meth:`get` caches further data (the dense protocol's mosaics)."""

    def __init__(self, cfg, log: Log = print):
        self.cfg, self.log = cfg, log
        self.device = resolve_device(cfg.eval.device, "eval.device")
        d, e = cfg.data, cfg.eval
        self.train_source = build_source(d.dataset, d.root, "train")
        self.test_source = build_source(d.dataset, d.root, "test")
        self.train_idx = limit_indices(self.train_source.labels, e.train_limit, e.seed)
        self.test_idx = limit_indices(self.test_source.labels, e.test_limit, e.seed + 1)
        self._sets: dict[str, object] = {}

    def get(self, key: str, build: Callable):
        if key not in self._sets:
            self._sets[key] = build()
        return self._sets[key]

    @property
    def train(self) -> ImageSet:
        return self.get("train", lambda: load_image_set(self.train_source, self.cfg.data.img_size, self.train_idx))

    @property
    def test(self) -> ImageSet:
        return self.get("test", lambda: load_image_set(self.test_source, self.cfg.data.img_size, self.test_idx))


class Context:
    """What the protocols of one representation share.

    ``rep``, ``suite``, ``cfg``, ``eval`` (= ``cfg.eval``), ``seed``, ``device``; :meth:`features`
    caches frozen features per (split, pool); :meth:`lin_probe` fits the LIN recipe's probe (for
    lin, longtail and robust); ``shared`` holds results one protocol leaves for a later one
    (``"lin_probe"``: LIN's cls probe; ``"ft_model"``: FT's fine-tuned classifier; both reused by ``robust``).
    """

    def __init__(self, rep, suite: Suite, log: Log = print):
        self.rep, self.suite, self.log = rep, suite, log
        self.cfg, self.eval, self.device = suite.cfg, suite.cfg.eval, suite.device
        self.seed = self.eval.seed
        self.shared: dict[str, object] = {}
        self._feats: dict[tuple[str, str], torch.Tensor] = {}
        rep.to(self.device)
        if getattr(rep, "encoder", None) is not None:
            rep.encoder.eval()  # frozen protocols; FT trains its own copy

    def features(self, split: str, pool: str, progress: TaskProgress) -> torch.Tensor:
        """Frozen features of the suite's ``split`` (``"train"``/``"test"``): float32 on CPU, ``[N, D]`` for
        ``pool`` cls/mean (both extracted in one pass), ``[N, L, D]`` for tokens."""
        if (split, pool) not in self._feats:
            pools = ("cls", "mean") if pool in ("cls", "mean") else (pool,)
            feats = extract_many(
                self.rep,
                getattr(self.suite, split),
                pools,
                self.eval.batch_size,
                self.device,
                progress=progress(f"{split} {'+'.join(pools)} features", unit="img"),
            )
            for name, value in feats.items():
                self._feats[split, name] = value
        return self._feats[split, pool]

    def lin_probe(self, feats: torch.Tensor, labels: torch.Tensor, progress: TaskProgress, what: str) -> LinearProbe:
        """The LIN probe (:func:`~siamim.eval.linear_probe.train_linear_probe` with ``eval.lin``'s recipe and
        ``eval.seed``) fitted on features ``[N, D]`` / long labels ``[N]``, over the training split's classes."""
        return train_linear_probe(
            feats,
            labels,
            self.suite.train.num_classes,
            **self.eval.lin.model_dump(),
            seed=self.seed,
            device=self.device,
            progress=progress(what, unit="step"),
        )


def evaluate(rep, cfg, protocols, suite: Suite | None = None, log: Log = print) -> list[ProtocolResult]:
    """Run ``protocols`` (names or ``"knn,lin,..."`` or ``"all"``) on ``rep`` with ``cfg.eval`` settings.

    Args:
        rep: an :class:`~siamim.eval.representation.EncoderRepresentation` or
            :class:`~siamim.eval.representation.PixelRepresentation`.
        suite: shared data (built from ``cfg`` when ``None``).
    Returns:
        one :class:`ProtocolResult` per protocol, in run order.
    """
    names = parse_protocols(protocols)
    suite = suite or Suite(cfg, log)
    ctx = Context(rep, suite, log)
    results = []
    for name in names:
        proto = get(name)
        log(f"[{name}] start ({rep.name}, device {suite.device})")
        t0 = time.perf_counter()
        metrics = proto.run(ctx, getattr(cfg.eval, name), TaskProgress(log, f"[{name}]"))
        wall = time.perf_counter() - t0
        log(f"[{name}] done in {wall:.1f}s: " + ", ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
        results.append(ProtocolResult(name, metrics, wall))
    return results
